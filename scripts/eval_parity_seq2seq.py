"""Same weights, two evaluators: sft's evaluation of a finished summarization/translation run
(encoder-decoder) against transformers' Seq2SeqTrainer.predict(predict_with_generate=True) on
its best/, with the run's own validation features, decoding settings and batch size, both
scored by sft.metrics.generation. Prints the scores and the wall time of each.

    python scripts/eval_parity_seq2seq.py runs/summarization/bert2bert-minilm/<timestamp> 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

from sft.run.runner import load_finished
from sft.train.evaluation import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("batch_size", type=int, nargs="?", default=16)
    ns = parser.parse_args()
    run, prepared, model = load_finished(ns.run_dir, [f"trainer.eval_batch_size={ns.batch_size}"],
                                         ("validation",))
    features = prepared.features["validation"]
    start = time.perf_counter()
    ours = evaluate(prepared.task, model, features, run, None)
    ours_s = time.perf_counter() - start

    hf_model = AutoModelForSeq2SeqLM.from_pretrained(f"{ns.run_dir}/best")
    args = Seq2SeqTrainingArguments(output_dir="/tmp/eval-parity", report_to=[], use_cpu=True,
                                    per_device_eval_batch_size=ns.batch_size,
                                    predict_with_generate=True,
                                    generation_config=model.generation_config)
    inputs = features.select_columns(["input_ids", "labels"])
    tokenizer = prepared.tokenizer
    trainer = Seq2SeqTrainer(model=hf_model, args=args,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=hf_model))
    start = time.perf_counter()
    predicted = trainer.predict(inputs).predictions  # dataset order (default sampling)
    hf_s = time.perf_counter() - start
    scorer = prepared.task.scorer()
    texts = tokenizer.batch_decode(np.where(predicted < 0, tokenizer.pad_token_id, predicted),
                                   skip_special_tokens=True)
    for text, references in zip(texts, features["references"], strict=True):
        scorer.add(text.strip(), references)
    print("sft ", {k: round(v, 2) for k, v in ours.items()}, f"{ours_s:.1f} s")
    print("HF  ", {k: round(v, 2) for k, v in scorer.result().items()}, f"{hf_s:.1f} s")


if __name__ == "__main__":
    main()
