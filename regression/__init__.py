"""engine-regression: gate an engine (a new TensorRT-LLM version, quant format or build option) on a suite of
prompts with goldens. See regression/cli.py; data: suites/, goldens/, thresholds.yaml."""
