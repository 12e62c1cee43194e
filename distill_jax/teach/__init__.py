"""`--mode=teach`: a teacher LLM writes chain-of-thought rationales (and labels) for records.

    records {input[, label]} -> prompts.py (few-shot CoT prompt per input and sample)
      -> cache.py (answers already in <workdir>/teacher/cache.jsonl are not asked again)
      -> backends.py (OpenAI-compatible HTTP, a local transformers model, or batch files)
      -> answers.py (the dataset's parser; filters and majority vote)
      -> run.py (OUT, rejected.jsonl, summary.json)

`config_check.validate_teacher` rejects impossible `config.teacher` settings up front.
"""
