"""`--mode=teach`: a teacher LLM writes chain-of-thought rationales (and labels) for records.

records -> prompts -> cache -> backends (HTTP, local model, batch files) -> answers (parse,
filter, vote) -> run (OUT, rejected.jsonl, summary.json); docs/architecture.md, section 7.
"""
