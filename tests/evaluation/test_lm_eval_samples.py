"""lm-eval's per-sample log as prediction records: known responses give known per-filter scores."""

from __future__ import annotations

import pytest

from tests.support import scripted_gsm8k_lm

pytest.importorskip("lm_eval")


def test_records_carry_each_filters_response_and_exact_match(lm_tasks):
    from harness.evaluation.lm_eval import score

    result = score(
        scripted_gsm8k_lm(), lm_tasks, num_fewshot=0, limit=5, max_new_tokens=16, settings={}, show_progress=False
    )
    by_filter = {}
    for record in result.examples:
        by_filter.setdefault(record["metric"], []).append(record)
    assert set(by_filter) == {"exact_match_strict", "exact_match_flexible"}
    strict, flexible = by_filter["exact_match_strict"], by_filter["exact_match_flexible"]
    assert [r["doc_id"] for r in strict] == [r["doc_id"] for r in flexible] == [0, 1, 2, 3, 4]
    assert [r["score"] for r in strict] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert [r["score"] for r in flexible] == [1.0, 1.0, 0.0, 1.0, 0.0]
    # lm-eval's gsm8k target is the whole answer; its exact match ignores all up to '#### '.
    numbers = [r["target"].split("#### ")[-1] for r in strict]
    assert [r["target"] for r in strict] == [r["target"] for r in flexible]
    assert [r["response"] for r in strict][:3] == [numbers[0], "[invalid]", str(int(numbers[2]) + 1)]
    assert flexible[4]["response"] == "999" and flexible[3]["response"] == f"${numbers[3]}"
    for metric, records in by_filter.items():
        assert sum(r["score"] for r in records) / len(records) == result.metrics[metric]


def test_evaluation_does_not_collect_the_machines_environment(lm_tasks, monkeypatch):
    """lm-eval's results carry torch's environment report, which runs `pip list` and other
    subprocesses (about 0.6 s a call, the pre-flight and the scoring each paying it). The harness
    records its own environment in the row, so neither call may collect it."""
    import torch.utils.collect_env

    from harness.evaluation.lm_eval import requests, score

    collected = []  # lm-eval swallows errors from the report, so calls are counted, not refused
    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", lambda: collected.append(1) or "")
    recorded = requests(lm_tasks, num_fewshot=0, limit=2)
    assert len(recorded.generate) == 2
    result = score(
        scripted_gsm8k_lm(), lm_tasks, num_fewshot=0, limit=2, max_new_tokens=16, settings={}, show_progress=False
    )
    assert [r["doc_id"] for r in result.examples if r["metric"] == "exact_match_strict"] == [0, 1]
    assert collected == []
