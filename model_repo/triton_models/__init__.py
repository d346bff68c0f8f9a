"""The Python-backend models (each file is copied to `<repo>/<model>/1/model.py`; import only inside Triton's stub).

Their logic lives in importable modules (model_repo.requests, .harmony, .tokenizer, .responses, .backends, and
runtime.scheduler), which the tests exercise without a server; these files are the Triton glue.
"""
