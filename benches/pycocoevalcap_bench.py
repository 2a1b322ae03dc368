#!/usr/bin/env python3
"""Reference side of `cargo bench --bench eval`.

Scores pretokenized captions with pycocoevalcap's Bleu(4), Rouge() and
Cider(), exactly as `Scorer.compute_score(gts, res)` is called by
pycocoevalcap's COCOEvalCap (dicts of lists of strings), and reports the
wall time of each scorer.

usage: pycocoevalcap_bench.py DATA.json OUT.json
  DATA.json: {"gts": {id: [ref, ...]}, "res": {id: [candidate]}}
  OUT.json:  {"seconds": {"Bleu": s, "Rouge": s, "Cider": s},
              "corpus": {"Bleu_1": "repr", ...}, "per_item": {"Bleu_1": ["repr", ...], ...}}
Floats are written as repr() strings so the caller can compare them bit for bit.
"""
import json
import sys
import time

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge


def main():
    data_path, out_path = sys.argv[1], sys.argv[2]
    with open(data_path) as f:
        data = json.load(f)
    gts, res = data["gts"], data["res"]
    seconds, corpus, per_item = {}, {}, {}

    t = time.perf_counter()
    score, scores = Bleu(4).compute_score(gts, res, verbose=0)
    seconds["Bleu"] = time.perf_counter() - t
    for k in range(4):
        corpus["Bleu_%d" % (k + 1)] = repr(float(score[k]))
        per_item["Bleu_%d" % (k + 1)] = [repr(float(x)) for x in scores[k]]

    t = time.perf_counter()
    score, scores = Rouge().compute_score(gts, res)
    seconds["Rouge"] = time.perf_counter() - t
    corpus["ROUGE_L"] = repr(float(score))
    per_item["ROUGE_L"] = [repr(float(x)) for x in scores]

    t = time.perf_counter()
    score, scores = Cider().compute_score(gts, res)
    seconds["Cider"] = time.perf_counter() - t
    corpus["CIDEr"] = repr(float(score))
    per_item["CIDEr"] = [repr(float(x)) for x in scores]

    with open(out_path, "w") as f:
        json.dump({"seconds": seconds, "corpus": corpus, "per_item": per_item}, f)


if __name__ == "__main__":
    main()
