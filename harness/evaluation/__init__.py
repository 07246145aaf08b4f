"""How a model is run for scores and timings: evaluation backends (base.py: the contract and EVAL_BACKENDS;
torch_forward.py, lm_eval.py, vllm.py), official metrics, generation costs and the lm-eval bridge.
"""
