"""--mode=teach against a real scripted OpenAI-compatible server on 127.0.0.1 (CPU, offline).

The server (tests/teacher_server.py) answers each query from tags in its text: `[ans=x]` the
label, `[429x2]`, `[500x1]`, `[fail]`, `[bad400]`, `[slow=S]`, `[garbage]`, `[wrong]`,
`[vote=a,b]`. Retry delays are a few milliseconds here.
"""

from __future__ import annotations

import json
import pathlib
import signal
import socket
import subprocess
import sys
import time

import ml_collections
import pytest

from configs import generic as generic_config
from distill_jax import config_check
from distill_jax.data import generic, sources
from distill_jax.errors import UserError
from distill_jax.teach import answers, cache, prompts
from distill_jax.teach import run as teach
from tests import fixtures
from tests.launch_util import ROOT, launch_env
from tests.teacher_server import TeacherServer

KEY = "sk-test-DO-NOT-LEAK-7f3a9c"
AUTH = f"Bearer {KEY}"


@pytest.fixture
def server():
    s = TeacherServer(key=KEY)
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def write_records(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(url: str, **teacher) -> ml_collections.ConfigDict:
    c = generic_config.get_config()
    c.logging.progress_bar = False
    t = c.teacher
    t.base_url, t.model = url, "teacher-7b"
    t.backoff_s, t.backoff_max_s, t.max_retries, t.timeout_s = 0.005, 0.02, 3, 10.0
    for k, v in teacher.items():
        t[k] = v
    return c


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


MIXED = [
    {"input": "Patient 1 needs a glucose check [ans=glucose]", "label": "glucose"},
    {"input": "Patient 2 [ans=tsh] [429x2]", "label": "tsh"},
    {"input": "Patient 3 [ans=ldl] [500x1]", "label": "ldl"},
    {"input": "Patient 4 [ans=ldl] [wrong]", "label": "ldl"},
    {"input": "Patient 5 [garbage]", "label": "hba1c"},
    {"input": "Patient 6 [fail]", "label": "tsh"},
    {"input": "Patient 7 [bad400]"},
    {"input": "Patient 8 [ans=ferritin]"},
]


def test_retries_rejections_filters_and_cache(tmp_path, server):
    src = write_records(tmp_path / "in.jsonl", MIXED)
    out, wd = tmp_path / "out.jsonl", tmp_path / "w"
    s = teach.run_teach(config(server.url), wd, str(src), str(out))
    kept = {r["input"]: r for r in read_jsonl(out)}
    assert set(kept) == {MIXED[i]["input"] for i in (0, 1, 2, 3, 7)}
    assert kept[MIXED[3]["input"]] == {
        "input": MIXED[3]["input"],
        "label": "ldl",  # the gold label where the input has one
        "rationale": "The question asks for wrong, so wrong it is.",
        "llm_label": "wrong",
    }
    assert kept[MIXED[7]["input"]]["label"] == "ferritin"  # no gold: the teacher's
    rejected = {r["input"]: r for r in read_jsonl(wd / "teacher" / "rejected.jsonl")}
    assert rejected[MIXED[4]["input"]]["reason"] == "unparseable"
    assert rejected[MIXED[4]["input"]]["text"] == " I am not sure what to say here."
    assert rejected[MIXED[5]["input"]]["reason"] == "request_failed: 500 internal error"
    assert rejected[MIXED[6]["input"]]["reason"] == (
        "request_failed: 400 prompt is too long for this model"
    )
    counts = server.counts
    assert counts[MIXED[1]["input"]] == 3 and counts[MIXED[2]["input"]] == 2  # retried
    assert counts[MIXED[5]["input"]] == 4  # 1 + max_retries, then given up
    assert counts[MIXED[6]["input"]] == 1  # a 400 is not retried
    assert s["rejected"] == {"request_failed": 2, "unparseable": 1}
    assert s["requests"]["http_attempts"] == len(server.requests) == 14
    # Accuracy over the 5 answered inputs with gold: glucose, tsh, ldl right; wrong, garbage not.
    assert s["teacher_accuracy"] == pytest.approx(3 / 5)
    assert s["teacher_accuracy_per_label"] == {"glucose": 1.0, "hba1c": 0.0, "ldl": 0.5, "tsh": 1.0}
    assert json.loads((wd / "teacher" / "summary.json").read_text())["kept"] == 5
    assert len((wd / "teacher" / "cache.jsonl").read_text().splitlines()) == 6
    records, _ = generic.read_generic_file(out)  # OUT is generic training data as it stands
    assert [r["llm_label"] for r in records] == [kept[r["input"]]["llm_label"] for r in records]

    # Another filter on the same workdir: only the two failed requests are sent again.
    before = len(server.requests)
    s = teach.run_teach(config(server.url, filter="gold"), wd, str(src), str(out))
    assert s["requests"]["from_cache"] == 6 and s["requests"]["sent"] == 2
    assert sorted(server.queries()[before:]).count(MIXED[6]["input"]) == 1
    rejected = {r["input"]: r["reason"] for r in read_jsonl(wd / "teacher" / "rejected.jsonl")}
    assert rejected[MIXED[3]["input"]] == "disagrees_with_gold"
    assert MIXED[7]["input"] in {r["input"] for r in read_jsonl(out)}  # no gold: kept

    s = teach.run_teach(config(server.url, filter="none"), wd, str(src), str(out))
    rows = {r["input"]: r for r in read_jsonl(out)}
    assert rows[MIXED[4]["input"]]["llm_label"] == "" and len(rows) == 6
    assert s["rejected"] == {"request_failed": 2}


def test_the_key_is_sent_only_in_the_header_and_never_written(tmp_path, server, capsys):
    src = write_records(tmp_path / "in.jsonl", [*MIXED, {"input": "Patient 10 [echo]"}])
    s = teach.run_teach(config(server.url), tmp_path / "w", str(src), str(tmp_path / "o.jsonl"))
    print(teach.format_summary(s))
    assert {r["headers"]["Authorization"] for r in server.requests} == {AUTH}
    rejected = read_jsonl(tmp_path / "w" / "teacher" / "rejected.jsonl")
    assert any("Bearer ***" in r["reason"] for r in rejected)  # the echoed key is masked
    assert KEY not in "".join(capsys.readouterr())
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path


def test_retry_after_is_honoured(tmp_path, server):
    import httpx

    from distill_jax.teach import backends

    rows = [{"input": "Patient 1 [ans=tsh]"}, {"input": "Patient 2 [ans=tsh] [429x2]"}]
    src = write_records(tmp_path / "in.jsonl", rows)
    c = config(server.url, backoff_s=5.0, backoff_max_s=5.0)  # Retry-After (0.01 s) wins
    start = time.time()
    s = teach.run_teach(c, tmp_path / "w", str(src), str(tmp_path / "o.jsonl"))
    assert s["kept"] == 2 and server.counts[rows[1]["input"]] == 3 and time.time() - start < 4
    date = "Wed, 21 Oct 2015 07:28:00 GMT"  # in the past: no wait
    assert backends.retry_after(httpx.Response(429, headers={"Retry-After": date})) == 0.0
    assert backends.retry_after(httpx.Response(429, headers={"Retry-After": "2"})) == 2.0
    assert backends.retry_after(httpx.Response(429)) is None


def test_timeouts_are_retried_then_rejected(tmp_path, server):
    rows = [{"input": "Patient 1 [ans=tsh]"}, {"input": "Patient 2 [ans=tsh] [slow=0.4]"}]
    src = write_records(tmp_path / "in.jsonl", rows)
    c = config(server.url, timeout_s=0.1, max_retries=1)
    s = teach.run_teach(c, tmp_path / "w", str(src), str(tmp_path / "o.jsonl"))
    assert s["kept"] == 1 and server.counts["Patient 2 [ans=tsh] [slow=0.4]"] == 2
    (rejected,) = read_jsonl(tmp_path / "w" / "teacher" / "rejected.jsonl")
    assert rejected["reason"] == "request_failed: no HTTP answer: ReadTimeout"


def test_a_server_that_only_fails_is_an_error_and_no_output(tmp_path, server):
    src = write_records(tmp_path / "in.jsonl", [{"input": "a [fail]"}, {"input": "b [fail]"}])
    with pytest.raises(UserError, match=r"answered none of 2 request\(s\): last error: 500 int"):
        teach.run_teach(config(server.url), tmp_path / "w", str(src), str(tmp_path / "o.jsonl"))
    assert not (tmp_path / "o.jsonl").exists()


def test_distillm_generic_defaults_to_the_generic_llm():
    from distill_jax import distillm

    args = distillm.build_parser().parse_args(["--dataset", "generic"])
    assert distillm.config_from_args(args).data.llm == "generic"
    args = distillm.build_parser().parse_args(["--dataset", "cqa"])
    assert distillm.config_from_args(args).data.llm == "palm"


def test_majority_vote_and_completions_api(tmp_path, server):
    rows = [
        {"input": "Q1 [vote=tsh,tsh,ldl]", "label": "tsh"},
        {"input": "Q2 [vote=tsh,ldl,hb]", "label": "tsh"},
        {"input": "Q3 [vote=ldl,ldl,ldl]", "label": "tsh"},
    ]
    src = write_records(tmp_path / "in.jsonl", rows)
    c = config(server.url, num_samples=3, temperature=0.7, filter="majority", api="completions")
    s = teach.run_teach(c, tmp_path / "w", str(src), str(tmp_path / "out.jsonl"))
    assert {r["path"] for r in server.requests} == {"/v1/completions"}
    assert server.counts["Q1 [vote=tsh,tsh,ldl]"] == 3  # one request per sample
    kept = {r["input"]: r["llm_label"] for r in read_jsonl(tmp_path / "out.jsonl")}
    assert kept == {"Q1 [vote=tsh,tsh,ldl]": "tsh", "Q3 [vote=ldl,ldl,ldl]": "ldl"}
    rejected = read_jsonl(tmp_path / "w" / "teacher" / "rejected.jsonl")
    assert [(r["input"], r["reason"]) for r in rejected] == [
        ("Q2 [vote=tsh,ldl,hb]", "no_majority")
    ]
    assert len(rejected[0]["samples"]) == 3
    assert s["requests"]["sent"] == 9


def test_parsing_follows_the_dataset_parsers():
    assert answers.parse("anli1", "It says so. So the answer is neutral") == (
        "It says so.",
        "neutral",
    )
    assert answers.parse("anli1", "x. So the answer is Entailment.\nQ: next") == (
        "x.",
        "entailment",
    )
    assert answers.parse("esnli", "A dog is an animal.\nAnswer: entailment") is not None
    assert answers.parse("esnli", "So the answer is maybe.") is None
    query = "Where?\nAnswer Choices:\n(a) bank\n(b) library\n(c) x\n(d) y\n(e) z"
    assert answers.parse("cqa", "Books. So the answer is (b) library.", query) == (
        "Books.",
        "library",
    )
    assert answers.parse("cqa", "Books. So the answer is library.", query)[1] == "library"
    assert answers.parse("cqa", "Books. So the answer is (a).", query)[1] == "bank"
    assert answers.parse("svamp", "8 - 3. So the answer is (8 - 3).") == ("8 - 3.", "(8 - 3)")
    assert answers.parse("svamp", "So the answer is (os.system(1)).") is None
    assert answers.parse("generic", "Because. So the answer is Dr. Who.") == ("Because.", "Dr. Who")
    assert answers.vote_key("svamp", "( 8.0 - 3.0 )") == answers.vote_key("svamp", "(10 / 2)")


@pytest.mark.parametrize("name", sorted(prompts.BUILTIN))
def test_builtin_prompts_have_the_papers_form_and_parse_back(name):
    prompter, shots = prompts.make_prompter(name, "", rationalize=False)
    text = prompter.render("the query", None, shots)
    assert text.endswith("Q: the query\nA:") and prompter.version.startswith(name)
    for shot in shots:
        block = prompts.render_shots(name, [shot], False)
        assert block.startswith("Q: ") and f"So the answer is {shot.label}.\n\n" in block
        answer = block.split("\nA:", 1)[1]
        want = shot.label.split(") ", 1)[1] if name == "cqa" else shot.label
        query = prompts.show_input(name, shot.input)
        assert answers.parse(name, answer, shot.input if name == "cqa" else query) == (
            shot.rationale,
            want,
        )


def test_prompt_file_placeholders_and_rationalize(tmp_path, server):
    template = tmp_path / "p.txt"
    template.write_text('Examples {"json": 1}:\n{shots}Q: {input} (it is {label})\nA:')
    rows = [
        {"input": "shot one", "label": "glucose", "rationale": "Sugar."},
        {"input": "Patient 9 [ans=tsh]", "label": "tsh"},
    ]
    src = write_records(tmp_path / "in.jsonl", rows)
    c = config(server.url, prompt_file=str(template), num_shots=1, rationalize=True)
    teach.run_teach(c, tmp_path / "w", str(src), str(tmp_path / "out.jsonl"))
    bodies = [r["query"] for r in server.requests]
    assert "Patient 9 [ans=tsh] (it is tsh)" in bodies
    c.teacher.num_shots = 2
    with pytest.raises(UserError, match=r"teacher\.num_shots=2.*only 1 record"):
        teach.run_teach(c, tmp_path / "w", str(src), str(tmp_path / "out.jsonl"))
    template.write_text("no placeholder")
    with pytest.raises(UserError, match=r"teacher\.prompt_file=.*no \{input\}"):
        teach.run_teach(c, tmp_path / "w", str(src), str(tmp_path / "out.jsonl"))


def test_config_validation_names_the_field(tmp_path):
    for field, value, match in [
        ("filter", "best", r"teacher\.filter='best'"),
        ("backend", "grpc", r"teacher\.backend='grpc'"),
        ("concurrency", 0, r"teacher\.concurrency=0"),
        ("base_url", "127.0.0.1:8000", r"teacher\.base_url=.*http://"),
        ("model", "", r"teacher\.model=''"),
    ]:
        c = config("http://127.0.0.1:1/v1", **{field: value})
        with pytest.raises(UserError, match=match):
            config_check.validate_teacher(c.teacher)
    with pytest.raises(UserError, match=r"teacher\.filter='majority': needs teacher\.num_samples"):
        config_check.validate_teacher(config("http://x/v1", filter="majority").teacher)
    bad = write_records(tmp_path / "bad.jsonl", [{"input": "a"}, {"input": "b", "label": 3}])
    with pytest.raises(UserError, match=r"bad\.jsonl, line 2 \(record 2\): field 'label'"):
        teach.run_teach(config("http://x/v1"), tmp_path / "w", str(bad), str(tmp_path / "o"))


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    store = cache.AnswerCache(path)
    store.put("a", "text a", 3, 4)
    store.put("b", "text b")
    store.close()
    with open(path, "a") as f:
        f.write('{"key": "c", "text": "half')  # SIGKILL mid-write
    store = cache.AnswerCache(path)
    assert len(store) == 2 and store.get("a")["completion_tokens"] == 4
    store.put("c", "text c")
    store.close()
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b", "c"]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", lines[2]]) + "\n")
    with pytest.raises(UserError, match=r"cache\.jsonl, line 2: not a cache entry"):
        cache.AnswerCache(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "--config=configs/generic.py", "--mode=teach",
         "--config.logging.progress_bar=False", "--config.teacher.model=teacher-7b",
         "--config.teacher.backoff_s=0.005", "--config.teacher.backoff_max_s=0.02", *args],
        cwd=ROOT, env=launch_env(1, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_wrong_key_and_unreachable_url_exit_clearly(tmp_path, server):
    src = write_records(tmp_path / "in.jsonl", MIXED)
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there

    def args(name: str, base_url: str) -> list[str]:
        return [f"--input={src}", f"--output={tmp_path / name}.jsonl",
                f"--workdir={tmp_path / name}", f"--config.teacher.base_url={base_url}",
                "--config.teacher.max_retries=1"]  # fmt: skip

    # Both at once: each process spends most of its time importing.
    bad_key = _launch(args("key", server.url), OPENAI_API_KEY="sk-bad")
    no_server = _launch(args("url", url))
    _, err = bad_key.communicate(timeout=120)
    assert bad_key.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith(f"error: teacher at {server.url}/chat")
    assert "401 Incorrect API key provided" in err and "Traceback" not in err
    assert len(server.requests) <= 2 and not (tmp_path / "key.jsonl").exists()
    _, err = no_server.communicate(timeout=120)
    assert no_server.returncode == 1 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: teacher at {url}") and "ConnectError" in last
    assert not (tmp_path / "url.jsonl").exists()


@pytest.mark.slow
def test_sigkill_part_way_then_rerun(tmp_path):
    slow = TeacherServer(delay=0.15)
    rows = [{"input": f"Patient {k} [ans=tsh]", "label": "tsh"} for k in range(40)]
    src = write_records(tmp_path / "in.jsonl", rows)
    out, wd = tmp_path / "out.jsonl", tmp_path / "w"
    args = [f"--input={src}", f"--output={out}", f"--workdir={wd}",
            f"--config.teacher.base_url={slow.url}", "--config.teacher.concurrency=4"]  # fmt: skip
    proc = _launch(args)
    cache_file = wd / "teacher" / "cache.jsonl"
    deadline = time.time() + 90
    while not (cache_file.exists() and len(cache_file.read_text().splitlines()) >= 8):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    slow.stop()
    asked_before = set(slow.queries())
    assert len(asked_before) < 40 and not out.exists()
    fast = TeacherServer()
    try:
        proc = _launch([*args[:3], f"--config.teacher.base_url={fast.url}"])
        stdout, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reasked = asked_before & set(fast.queries())
        assert len(reasked) <= 4, reasked  # at most the `concurrency` in flight at the kill
        assert len(fast.requests) == 40 - (len(asked_before) - len(reasked))
    finally:
        fast.stop()
    kept = read_jsonl(out)
    assert sorted(r["input"] for r in kept) == sorted(r["input"] for r in rows)
    assert len(cache_file.read_text().splitlines()) == 40
    assert "40 inputs, 40 kept" in stdout


def test_batch_export_then_import(tmp_path, server):
    src = write_records(tmp_path / "in.jsonl", MIXED[:5])
    wd, out = tmp_path / "w", tmp_path / "out.jsonl"
    c = config("http://unused/v1", backend="batch_export")
    assert teach.run_teach(c, wd, str(src), "")["exported"] == 5
    lines = read_jsonl(wd / "teacher" / "batch_requests.jsonl")
    assert lines[0]["url"] == "/v1/chat/completions" and lines[0]["body"]["model"] == "teacher-7b"
    results = []
    for k, line in enumerate(lines):  # what `vllm run-batch` writes, from our server's answers
        status = 429
        while status in (429, 500):  # the batch runner retries these itself
            status, _, body = server.respond(line["url"], line["body"], {"Authorization": AUTH})
        status = 503 if k == 4 else status  # a request the batch job lost
        resp = {"status_code": status, "body": body if status == 200 else {}}
        err = None if status == 200 else {"message": "worker lost"}
        results.append(
            {"id": str(k), "custom_id": line["custom_id"], "response": resp, "error": err}
        )
    res = write_records(tmp_path / "results.jsonl", results)
    s = teach.run_teach(config("http://unused/v1", backend="batch_import"), wd, str(res), str(out))
    assert s["kept"] == 4 and s["rejected"] == {"request_failed": 1}
    rejected = read_jsonl(wd / "teacher" / "rejected.jsonl")
    assert rejected[0]["reason"] == "request_failed: 503 worker lost"
    # The online backend uses the same keys: nothing is asked but the failed one.
    before = len(server.requests)
    s = teach.run_teach(config(server.url), wd, str(src), str(out))
    assert s["requests"]["from_cache"] == 4 and len(server.requests) - before == 1


def _tiny_causal_lm(path: pathlib.Path) -> pathlib.Path:
    import tokenizers
    import torch
    import transformers

    words = "Q A So the answer is glucose tsh ldl Patient a b c d e f . : ? 1 2 3".split()
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "</s>", *words])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
        pad_token_id=1, eos_token_id=2, bos_token_id=2,
    )  # fmt: skip
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.mark.slow
def test_hf_backend_end_to_end(tmp_path):
    import torch
    import transformers

    model_dir = _tiny_causal_lm(tmp_path / "lm")
    rows = [{"input": f"Patient {k} a b c", "label": "tsh"} for k in range(5)]
    src = write_records(tmp_path / "in.jsonl", rows)
    c = config("", backend="hf", model=str(model_dir), concurrency=2, max_tokens=6, filter="none")
    c.teacher.api = "completions"
    s = teach.run_teach(c, tmp_path / "w", str(src), str(tmp_path / "out.jsonl"))
    assert s["inputs"] == 5 and s["requests"]["answered"] == 5 and s["tokens"]["completion"] > 0
    got = {r["input"]: r["rationale"] for r in read_jsonl(tmp_path / "out.jsonl")}
    # Batched (left-padded) generation gives what one prompt alone gives.
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompter, shots = prompts.make_prompter("generic", "", False)
    for r in rows[:2]:
        enc = tok(prompter.render(r["input"], None, shots), return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=1)[0]
        new = ids[enc["input_ids"].shape[1] :].tolist()
        new = new[: new.index(2)] if 2 in new else new
        assert got[r["input"]] == tok.decode(new, skip_special_tokens=True).split("\nQ:")[0].strip()
    s = teach.run_teach(c, tmp_path / "w", str(src), str(tmp_path / "out.jsonl"))
    assert s["requests"]["sent"] == 0 and s["requests"]["from_cache"] == 5


def test_reference_dataset_split_without_input(tmp_path, server):
    root = fixtures.write_reference_fixtures(tmp_path / "data", ["cqa"])
    c = config(server.url, filter="none")
    c.data.name, c.data.dir = "cqa", str(root)
    s = teach.run_teach(c, tmp_path / "w", "", str(tmp_path / "out.jsonl"))
    assert s["inputs"] == len(fixtures.EXAMPLES["cqa"]["train"])
    assert server.queries()[0].startswith(fixtures.EXAMPLES["cqa"]["train"][0].input)
    c.teacher.split = "valid"
    with pytest.raises(UserError, match="cqa has no valid split"):
        teach.run_teach(c, tmp_path / "w", "", str(tmp_path / "out.jsonl"))


def _data_cfg(train: pathlib.Path, test: pathlib.Path, label_type: str):
    return ml_collections.ConfigDict(
        dict(name="generic", dir="", llm="generic", label_type=label_type, subsample=1.0,
             train_file=str(train), valid_file=str(test), test_file=str(test),
             skip_bad_records=False)
    )  # fmt: skip


def test_generic_llm_labels_train_side(tmp_path, caplog):
    recs = fixtures.generic_records(6)
    taught = [{**r, "llm_label": "wrong" if k % 2 else r["label"]} for k, r in enumerate(recs)]
    train = fixtures.write_generic_file(tmp_path / "train.jsonl", taught)
    test = fixtures.write_generic_file(tmp_path / "test.json", recs[:2], "concat")  # fork's
    with caplog.at_level("INFO"):
        got = sources.load_splits(_data_cfg(train, test, "llm"), 0)
    by_input = {r["input"]: r for r in got["train"]}
    assert len(by_input) == 6 and "wrong" in {r["label"] for r in got["train"]}
    for r in taught:
        if r["input"] in by_input:
            assert by_input[r["input"]]["label"] == r["llm_label"]
            assert by_input[r["input"]]["gt_label"] == r["label"]
    assert got["test"][0]["label"] == got["test"][0]["llm_label"] == recs[0]["label"]
    assert sum("healthcare fork" in m for m in caplog.messages) == 1
    gt = sources.load_splits(_data_cfg(train, test, "gt"), 0)
    assert all(r["label"] in {x["label"] for x in recs} for r in gt["train"])
    mixed = fixtures.write_generic_file(tmp_path / "mixed.json", [*taught[:3], recs[3]], "concat")
    with pytest.raises(UserError, match=rf"{mixed}, line 19 \(record 4\): no field 'llm_label'"):
        generic.read_generic_file(mixed)


def test_mode_data_reads_teach_output_as_generic_data(tmp_path, server):
    from distill_jax import modes

    rows = [
        {"input": f"Patient {k} [ans={'tsh' if k % 3 else 'ldl'}]", "label": "tsh"}
        for k in range(12)
    ]
    src = write_records(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    teach.run_teach(config(server.url), tmp_path / "w", str(src), str(out))
    c = generic_config.get_config()
    c.data.train_file = c.data.valid_file = c.data.test_file = str(out)
    c.data.label_type = "llm"
    modes.run_data(c, tmp_path / "run")
    train = read_jsonl(tmp_path / "run" / "data" / "train.jsonl")
    assert len(train) == 12 and {r["label"] for r in train} == {"tsh", "ldl"}  # the teacher's
    assert all(r["label"] == r["llm_label"] and r["gt_label"] == "tsh" for r in train)
    test = read_jsonl(tmp_path / "run" / "data" / "test.jsonl")
    assert {r["label"] for r in test} == {"tsh"} and {r["llm_label"] for r in test} == {
        "tsh",
        "ldl",
    }
