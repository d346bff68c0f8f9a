"""config.pbtxt templates with ${...} placeholders, filled by model_repo.write."""
