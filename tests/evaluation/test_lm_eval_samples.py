"""lm-eval's per-sample log as prediction records: known responses give known per-filter scores."""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def lm_config(tiny_gsm8k):
    from harness.spec.run import RunSpec
    from harness.suites.base import SUITES

    suite = SUITES.get("gsm8k")()
    task = suite.get_task("gsm8k")
    ((_, _, lm_set),) = suite.load_eval(task, suite.locate(task, tiny_gsm8k), RunSpec(suite="gsm8k", method="none"))
    return lm_set.config


def test_records_carry_each_filters_response_and_exact_match(lm_config):
    from lm_eval.api.model import LM

    from harness.evaluation.lm_eval import score

    def respond(doc_id: int, target: int) -> str:
        return [
            f"so {target} in all.\n#### {target}",  # strict and flexible
            f"The answer is {target}.",  # flexible only
            f"#### {target + 1}",  # neither
            f"It costs ${target}",  # flexible only ('$' is ignored)
            f"#### {target}\n\nThen 999 more",  # strict only: flexible takes the last number
        ][doc_id]

    class Scripted(LM):
        def generate_until(self, requests, disable_tqdm=False):
            return [respond(r.doc_id, int(r.doc["answer"].split("#### ")[-1])) for r in requests]

        def loglikelihood(self, requests, disable_tqdm=False):
            raise AssertionError("gsm8k is generative")

        loglikelihood_rolling = loglikelihood

    result = score(Scripted(), lm_config, num_fewshot=0, limit=5, max_new_tokens=16, settings={}, show_progress=False)
    by_filter = {}
    for record in result.examples:
        by_filter.setdefault(record["metric"], []).append(record)
    assert set(by_filter) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    strict, flexible = by_filter["exact_match,strict-match"], by_filter["exact_match,flexible-extract"]
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
