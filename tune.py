#!/usr/bin/env python
"""Tune low-precision quantization of a model until it meets an accuracy goal.

    python tune.py                                   # basic strategy, PyTorch, digits_cnn
    python tune.py strategy=basic framework=pytorch model=minilm_wordnet
    python tune.py -m strategy=basic,mse,tpe         # a sweep
    python tune.py resume=outputs/<date>/<time>      # continue a killed run
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lpot_research.cli import print_and_exit, register_resolvers, run_job, validate

CONF = Path(__file__).resolve().parent / "conf"
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="tune")
def main(cfg: DictConfig) -> float:
    return run_job(cfg)


if __name__ == "__main__":
    problem = validate(sys.argv[1:], CONF)  # before any model loads: one line, exit status 2
    if problem:
        print_and_exit(problem)
    main()
