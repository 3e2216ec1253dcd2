"""Unit tests of the reconciliation, the retry file and the results writers, on synthetic
files shaped like the service's output and error files (no network)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from dwbatch import reconcile, results_io, retry_file, retry_policy
from dwbatch.errors import InputError

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}},
          "required": ["answer"], "additionalProperties": False}


def chat_req(cid, prompt, **body):
    b = {"model": "m", "messages": [{"role": "user", "content": prompt}], **body}
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": b}


def chat_ok(cid, content, finish="stop", tool_calls=None):
    msg = {"role": "assistant", "content": content}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return {"id": f"batch_req_{cid}", "custom_id": cid, "error": None, "response": {
        "status_code": 200, "request_id": None, "body": {
            "object": "chat.completion", "choices": [
                {"index": 0, "message": msg, "finish_reason": finish}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}}}


def err_line(cid, message):
    return {"id": f"batch_req_{cid}", "custom_id": cid, "response": None,
            "error": {"code": None, "message": message}}


def write_jsonl(path: Path, objs) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for o in objs:
            f.write(json.dumps(o) + "\n")
    return str(path)


def run(sources, tmp_path, statuses=None, raise_tokens=None, fmt="jsonl", max_attempts=3):
    out = tmp_path / f"results.{fmt}"
    policy = retry_policy.RetryPolicy(statuses or retry_file.RETRYABLE, max_attempts)
    writer = retry_file.RetryWriter(str(tmp_path / "retry.jsonl"), policy, raise_tokens)
    with results_io.results_writer(str(out), fmt) as w:
        def on_record(chosen):
            w.write(chosen.record)
            writer.consider(chosen.record, chosen.request_line)
        summary = reconcile.reconcile(sources, on_record)
    retry_path = writer.commit()
    if fmt == "jsonl":
        records = [json.loads(x) for x in out.read_text().splitlines()]
    else:
        records = list(csv.DictReader(out.open(newline="")))
    return summary, records, retry_path


def source(tmp_path, name, requests_, outputs=(), errors_=(), status="completed", job=0,
           batch_id=None):
    inp = write_jsonl(tmp_path / f"{name}.jsonl", requests_)
    out = write_jsonl(tmp_path / f"{name}.out.jsonl", outputs)
    err = write_jsonl(tmp_path / f"{name}.err.jsonl", errors_)
    return reconcile.Source(inp, out, err, batch_id or f"batch-{name}", status, job=job,
                            label=name)


def test_out_of_order_output_is_joined_in_input_order(tmp_path):
    reqs = [chat_req(f"r{i}", f"p{i}") for i in range(6)]
    outs = [chat_ok(f"r{i}", f"ECHO p{i}") for i in (4, 0, 5, 2, 1, 3)]
    summary, recs, retry = run([source(tmp_path, "a", reqs, outs)], tmp_path)
    assert [r["custom_id"] for r in recs] == [f"r{i}" for i in range(6)]
    assert all(r["content"] == "ECHO p" + r["custom_id"][1:] for r in recs)
    assert summary.counts["ok"] == 6 and retry is None
    assert summary.usage == {"prompt_tokens": 18, "completion_tokens": 12, "total_tokens": 30}
    assert set(recs[0]) == {"custom_id", "status", "content", "finish_reason", "usage",
                            "error", "batch_id", "attempts"}
    assert recs[0]["batch_id"] == "batch-a"


def test_pending_and_missing_depend_on_batch_state(tmp_path):
    reqs = [chat_req("a", "x"), chat_req("b", "y")]
    running = source(tmp_path, "run", reqs, [chat_ok("b", "ECHO y")], status="in_progress")
    summary, recs, retry = run([running], tmp_path)
    assert [r["status"] for r in recs] == ["pending", "ok"] and retry is None
    cancelled = source(tmp_path, "can", reqs, [chat_ok("b", "ECHO y")], status="cancelled")
    summary, recs, retry = run([cancelled], tmp_path)
    assert [r["status"] for r in recs] == ["missing", "ok"]
    assert summary.missing_from_ended == 1
    assert "cancelled" in recs[0]["error"]["message"]
    assert json.loads(Path(retry).read_text())["custom_id"] == "a"


def test_cancelling_batch_keeps_unfinished_requests_pending(tmp_path):
    reqs = [chat_req("a", "x"), chat_req("b", "y")]
    src = source(tmp_path, "cl", reqs, [chat_ok("b", "ECHO y")], status="cancelling")
    summary, recs, retry = run([src], tmp_path)
    assert [r["status"] for r in recs] == ["pending", "ok"]  # in flight: may still finish
    assert summary.missing_from_ended == 0 and retry is None


def test_missing_from_a_completed_batch_is_not_counted_as_ended_badly(tmp_path):
    summary, recs, _ = run([source(tmp_path, "c", [chat_req("a", "x")])], tmp_path)
    assert recs[0]["status"] == "missing" and summary.missing_from_ended == 0


def test_error_messages_json_text_and_plain_text(tmp_path):
    reqs = [chat_req("j", "x"), chat_req("t", "y"), chat_req("n", "z")]
    inner = {"type": "NonRetriableHttpStatus",
             "details": {"status": 400, "body": json.dumps(
                 {"error": {"message": "bad temperature", "type": "invalid_request_error"}})}}
    errs = [err_line("t", "upstream exploded"), err_line("j", json.dumps(inner)),
            err_line("n", json.dumps({"type": "Timeout", "details": "took too long"}))]
    summary, recs, retry = run([source(tmp_path, "e", reqs, [], errs)], tmp_path)
    j, t, n = recs
    assert j["status"] == "error" and j["error"]["status_code"] == 400
    assert j["error"]["type"] == "NonRetriableHttpStatus"
    assert j["error"]["message"] == "bad temperature"
    assert j["error"]["details"]["details"]["status"] == 400
    assert t["error"] == {"code": None, "type": None, "status_code": None,
                          "message": "upstream exploded"}
    assert n["error"]["type"] == "Timeout" and n["error"]["message"] == "took too long"
    assert summary.counts["error"] == 3
    assert (j["retriable"], t["retriable"], n["retriable"]) == (False, True, True)
    lines = Path(retry).read_text().splitlines()
    assert [json.loads(x)["custom_id"] for x in lines] == ["t", "n"], "a 400 is not retried"


def test_output_line_with_http_error_status_is_an_error(tmp_path):
    line = {"id": "x", "custom_id": "a", "error": None, "response": {
        "status_code": 429, "body": {"error": {"message": "slow down"}}}}
    _, recs, _ = run([source(tmp_path, "h", [chat_req("a", "x")], [line])], tmp_path)
    assert recs[0]["status"] == "error" and recs[0]["retriable"] is True  # 429: try again
    assert recs[0]["error"]["status_code"] == 429 and recs[0]["error"]["message"] == "slow down"


def test_truncated_and_raised_max_tokens_in_retry_file(tmp_path):
    reqs = [chat_req("a", "one two three", max_tokens=2), chat_req("b", "p")]
    outs = [chat_ok("a", "ECHO one", finish="length"), chat_ok("b", "ECHO p")]
    how = retry_file.TokenRaise.parse("3x")
    summary, recs, retry = run([source(tmp_path, "t", reqs, outs)], tmp_path,
                               raise_tokens=how)
    assert recs[0]["status"] == "truncated" and recs[0]["finish_reason"] == "length"
    line = json.loads(Path(retry).read_text())
    assert line["custom_id"] == "a" and line["body"]["max_tokens"] == 6
    assert line["body"]["messages"] == reqs[0]["body"]["messages"]


def test_retry_file_keeps_original_bytes_and_status_filter(tmp_path):
    reqs = [chat_req("a", "x", max_tokens=1), chat_req("b", "y")]
    inp = tmp_path / "i.jsonl"
    original = [json.dumps(r, indent=None, separators=(", ", ": ")) for r in reqs]
    inp.write_text("\n".join(original) + "\n")
    outs = [chat_ok("a", "ECHO", finish="length")]
    src = reconcile.Source(str(inp), write_jsonl(tmp_path / "o.jsonl", outs),
                           write_jsonl(tmp_path / "e.jsonl", [err_line("b", "boom")]),
                           "B", "completed")
    _, _, retry = run([src], tmp_path)
    assert Path(retry).read_text().splitlines() == original
    _, _, retry = run([src], tmp_path, statuses=("error",))
    assert Path(retry).read_text().splitlines() == [original[1]]


def test_structured_output_invalid_json_and_schema_invalid(tmp_path):
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    reqs = [chat_req(c, c, response_format=rf) for c in ("good", "bad", "wrong")]
    reqs.append(chat_req("plain", "x"))
    outs = [chat_ok("wrong", '{"answer": 5}'), chat_ok("bad", "{not json"),
            chat_ok("good", '{"answer": "yes"}'), chat_ok("plain", '{"k": 1}')]
    summary, recs, retry = run([source(tmp_path, "s", reqs, outs)], tmp_path)
    good, bad, wrong, plain = recs
    assert good["status"] == "ok" and good["json"] == {"answer": "yes"}
    assert bad["status"] == "invalid_json" and "json" not in bad
    assert "not valid JSON" in bad["error"]["message"]
    assert wrong["status"] == "schema_invalid" and wrong["json"] == {"answer": 5}
    assert "['answer']" in wrong["error"]["message"] and "string" in wrong["error"]["message"]
    assert plain["status"] == "ok" and plain["json"] == {"k": 1}
    assert [json.loads(x)["custom_id"] for x in Path(retry).read_text().splitlines()] == \
        ["bad", "wrong"]


def test_duplicates_collapse_to_the_best(tmp_path):
    reqs = [chat_req("a", "x"), chat_req("b", "y")]
    outs = [chat_ok("a", "ECHO x", finish="length"), chat_ok("a", "ECHO x"),
            chat_ok("b", "old"), chat_ok("b", "new")]
    errs = [err_line("a", "first try failed")]
    summary, recs, retry = run([source(tmp_path, "d", reqs, outs, errs)], tmp_path)
    assert len(recs) == 2
    assert recs[0]["status"] == "ok" and recs[0]["content"] == "ECHO x"
    assert recs[1]["content"] == "new"  # equal status: the later line wins
    assert summary.superseded == 3 and retry is None


def test_several_jobs_later_ok_supersedes_and_order_is_the_first_jobs(tmp_path):
    reqs = [chat_req(f"r{i}", f"p{i}") for i in range(4)]
    first = source(tmp_path, "orig", reqs, [chat_ok("r0", "ECHO p0"), chat_ok("r3", "ECHO p3")],
                   [err_line("r1", "boom"), err_line("r2", "boom")], job=0)
    retry_reqs = [reqs[2], reqs[1], chat_req("extra", "e")]
    second = source(tmp_path, "retry", retry_reqs,
                    [chat_ok("r1", "ECHO p1"), chat_ok("extra", "ECHO e")],
                    [err_line("r2", "boom again")], job=1)
    summary, recs, retry = run([first, second], tmp_path)
    assert [r["custom_id"] for r in recs] == ["r0", "r1", "r2", "r3", "extra"]
    assert [r["status"] for r in recs] == ["ok", "ok", "error", "ok", "ok"]
    assert recs[1]["batch_id"] == "batch-retry" and recs[0]["batch_id"] == "batch-orig"
    assert recs[2]["error"]["message"] == "boom again"  # same status: the later job's
    assert [json.loads(x)["custom_id"] for x in Path(retry).read_text().splitlines()] == ["r2"]


def test_pending_retry_beats_old_failure_and_earlier_ok_stays(tmp_path):
    reqs = [chat_req("a", "x"), chat_req("b", "y")]
    first = source(tmp_path, "o", reqs, [chat_ok("b", "ECHO y")], [err_line("a", "boom")])
    second = source(tmp_path, "r", reqs, [], [err_line("b", "later failure")],
                    status="in_progress", job=1)
    _, recs, retry = run([first, second], tmp_path)
    assert [r["status"] for r in recs] == ["pending", "ok"]
    assert retry is None


def test_endpoints_completions_responses_messages_embeddings_tool_calls(tmp_path):
    def line(cid, body):
        return {"id": "x", "custom_id": cid, "error": None,
                "response": {"status_code": 200, "body": body}}
    reqs = [{"custom_id": "c", "method": "POST", "url": "/v1/completions",
             "body": {"model": "m", "prompt": "p"}},
            {"custom_id": "r", "method": "POST", "url": "/v1/responses",
             "body": {"model": "m", "input": "p"}},
            {"custom_id": "ri", "method": "POST", "url": "/v1/responses",
             "body": {"model": "m", "input": "p", "max_output_tokens": 1}},
            {"custom_id": "m", "method": "POST", "url": "/v1/messages",
             "body": {"model": "m", "max_tokens": 5, "messages": []}},
            {"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": "m", "input": "p"}},
            chat_req("tool", "x")]
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "f", "arguments": "{}"}}]
    outs = [
        line("c", {"object": "text_completion", "choices": [{"text": "ECHO p",
                                                             "finish_reason": "stop"}]}),
        line("r", {"object": "response", "status": "completed", "output": [
            {"type": "message", "content": [{"type": "output_text", "text": "ECHO "},
                                            {"type": "output_text", "text": "p"}]}],
            "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}}),
        line("ri", {"object": "response", "status": "incomplete",
                    "incomplete_details": {"reason": "max_output_tokens"},
                    "output": [{"type": "message", "content": [
                        {"type": "output_text", "text": "ECHO"}]}]}),
        line("m", {"type": "message", "stop_reason": "max_tokens", "content": [
            {"type": "text", "text": "ECHO"}, {"type": "tool_use", "id": "t", "name": "f",
                                               "input": {}}]}),
        line("e", {"object": "list", "data": [{"object": "embedding", "index": 0,
                                               "embedding": [0.1, 0.2]}],
                   "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
        chat_ok("tool", None, finish="tool_calls", tool_calls=calls),
    ]
    summary, recs, _ = run([source(tmp_path, "x", reqs, outs)], tmp_path)
    c, r, ri, m, e, tool = recs
    assert (c["status"], c["content"]) == ("ok", "ECHO p")
    assert (r["status"], r["content"], r["finish_reason"]) == ("ok", "ECHO p", "completed")
    assert (ri["status"], ri["content"]) == ("truncated", "ECHO")
    assert (m["status"], m["content"], m["finish_reason"]) == ("truncated", "ECHO",
                                                               "max_tokens")
    assert m["tool_calls"][0]["name"] == "f"
    assert e["status"] == "ok" and e["embedding"] == [0.1, 0.2] and e["content"] is None
    assert tool["status"] == "ok" and tool["tool_calls"] == calls
    assert summary.usage["prompt_tokens"] == 1 + 1 + 3  # responses + embeddings + chat
    assert summary.usage["total_tokens"] == 3 + 1 + 5  # responses + embeddings + chat


def test_responses_and_messages_structured_formats():
    assert reconcile.structured_schema(
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": SCHEMA}}}) == \
        (True, SCHEMA)
    assert reconcile.structured_schema({"output_format": {"type": "json_schema",
                                                          "schema": SCHEMA}}) == (True, SCHEMA)
    assert reconcile.structured_schema({"response_format": {"type": "json_object"}}) == \
        (True, None)
    assert reconcile.structured_schema({"response_format": {"type": "text"}}) == (False, None)


def test_changed_input_is_refused(tmp_path):
    src = source(tmp_path, "c", [chat_req("a", "x")])
    src.expected_sha256 = "0" * 64
    with pytest.raises(InputError, match="changed since it was submitted"):
        run([src], tmp_path)


def test_duplicate_input_ids_give_one_record(tmp_path):
    reqs = [chat_req("a", "x"), chat_req("a", "x"), chat_req("b", "y")]
    summary, recs, _ = run([source(tmp_path, "d", reqs, [chat_ok("a", "A"),
                                                         chat_ok("b", "B")])], tmp_path)
    assert [r["custom_id"] for r in recs] == ["a", "b"] and summary.duplicate_inputs == 1


def test_results_for_unknown_ids_are_counted_not_joined(tmp_path):
    summary, recs, _ = run([source(tmp_path, "u", [chat_req("a", "x")],
                                   [chat_ok("a", "A"), chat_ok("zzz", "?")])], tmp_path)
    assert len(recs) == 1 and summary.unmatched_results == 1


def test_csv_writer(tmp_path):
    reqs = [chat_req("a", "x"), chat_req("b", "y")]
    _, rows, _ = run([source(tmp_path, "v", reqs, [chat_ok("a", 'ECHO "x", y\nz')],
                             [err_line("b", "boom")])], tmp_path, fmt="csv")
    assert rows[0]["custom_id"] == "a" and rows[0]["content"] == 'ECHO "x", y\nz'
    assert rows[0]["total_tokens"] == "5" and rows[1]["error_message"] == "boom"
    assert list(rows[0]) == list(results_io.CSV_COLUMNS)


def test_token_raise_parsing():
    assert retry_file.TokenRaise.parse("2x") == retry_file.TokenRaise(factor=2.0)
    assert retry_file.TokenRaise.parse("4096") == retry_file.TokenRaise(absolute=4096)
    assert retry_file.TokenRaise.parse(None) == retry_file.TokenRaise(factor=2.0)  # default
    assert retry_file.TokenRaise.parse("same") is None
    for bad in ("0", "1x", "abc", "-5"):
        with pytest.raises(InputError):
            retry_file.TokenRaise.parse(bad)
    with pytest.raises(InputError, match="ok"):
        retry_file.parse_statuses("error,ok")


def test_raise_uses_usage_when_no_limit_and_right_field_per_endpoint():
    rec = {"usage": {"completion_tokens": 10}}
    line = json.dumps(chat_req("a", "x")).encode()
    assert json.loads(retry_file.raise_max_tokens(
        line, rec, retry_file.TokenRaise(factor=2)))["body"]["max_tokens"] == 20
    resp = json.dumps({"custom_id": "a", "url": "/v1/responses",
                       "body": {"max_output_tokens": 7}}).encode()
    assert json.loads(retry_file.raise_max_tokens(
        resp, rec, retry_file.TokenRaise(absolute=100)))["body"]["max_output_tokens"] == 100


def test_stale_retry_file_is_removed_when_nothing_needs_a_retry(tmp_path):
    stale = tmp_path / "retry.jsonl"
    stale.write_text("old\n")
    run([source(tmp_path, "ok", [chat_req("a", "x")], [chat_ok("a", "ECHO x")])], tmp_path)
    assert not stale.exists()


def test_results_stamp_vouches_only_for_the_files_it_saw(tmp_path):
    from dwbatch import results_stamp

    inp = write_jsonl(tmp_path / "in.jsonl", [chat_req("a", "x")])
    out = write_jsonl(tmp_path / "out.jsonl", [chat_ok("a", "y")])
    results, retry = str(tmp_path / "r.jsonl"), str(tmp_path / "r.retry.jsonl")
    Path(results).write_text("{}\n")

    def fp(status="completed"):
        return results_stamp.fingerprint(
            [reconcile.Source(inp, out, None, "b1", status)], {"format": "jsonl"})

    results_stamp.save(results, retry, fp(), {"n": 1})
    assert Path(results_stamp.stamp_path(results)).name == ".r.jsonl.stamp.json"
    assert results_stamp.load_reusable(results, retry, fp()) == {"n": 1}
    assert results_stamp.load_reusable(results, retry, fp("cancelled")) is None  # status
    with open(out, "a") as f:  # a new raw line
        f.write(json.dumps(chat_ok("a", "z")) + "\n")
    assert results_stamp.load_reusable(results, retry, fp()) is None
    results_stamp.save(results, retry, fp(), {"n": 2})
    Path(retry).write_text("{}\n")  # a retry file the stamp did not see
    assert results_stamp.load_reusable(results, retry, fp()) is None
    Path(retry).unlink()
    Path(results).write_text("{}\n{}\n")  # the results file was edited
    assert results_stamp.load_reusable(results, retry, fp()) is None
    results_stamp.save(results, retry, fp(), {"n": 3})
    results_stamp.forget(results)
    assert results_stamp.load_reusable(results, retry, fp()) is None


def test_a_request_that_never_ran_because_its_batch_expired_is_missing_not_failed():
    line = {"id": "batch_req_1", "custom_id": "a", "response": None,
            "error": {"code": "batch_expired",
                      "message": "This request could not be executed before the completion "
                                 "window expired."}}
    rec = reconcile.classify("error", line, None, "/v1/chat/completions")
    assert rec["status"] == "missing"
    assert "completion window" in rec["error"]["message"]
    line["error"]["code"] = None
    assert reconcile.classify("error", line, None, "/v1/chat/completions")["status"] == "error"


# --- the retry policy: attempts over jobs, what is worth retrying, what is given up --------

def test_attempts_count_the_jobs_that_sent_a_request_and_the_policy_gives_up(tmp_path):
    reqs = [chat_req("busy", "x"), chat_req("bad", "y"), chat_req("fine", "z")]
    busy = json.dumps({"type": "RetriableHttpStatus", "details": {"status": 503, "body": "x"}})
    bad = json.dumps({"type": "NonRetriableHttpStatus", "details": {"status": 422, "body": "no"}})
    jobs = [source(tmp_path, "j0", reqs, [chat_ok("fine", "ECHO z")],
                   [err_line("busy", busy), err_line("bad", bad)], job=0)]
    jobs += [source(tmp_path, f"j{n}", reqs[:1], [], [err_line("busy", busy)], job=n)
             for n in (1, 2)]
    # after two jobs: busy was sent twice (< 3): retried; bad is given up at once
    summary, recs, retry = run(jobs[:2], tmp_path)
    assert [(r["custom_id"], r["attempts"], r.get("retriable")) for r in recs] == [
        ("busy", 2, True), ("bad", 1, False), ("fine", 1, None)]
    assert [json.loads(x)["custom_id"] for x in Path(retry).read_text().splitlines()] == \
        ["busy"]
    # after three: busy is given up too; nothing is left to retry
    policy = retry_policy.RetryPolicy(retry_file.RETRYABLE, 3)
    writer = retry_file.RetryWriter(str(tmp_path / "r3.jsonl"), policy)
    reconcile.reconcile(jobs, lambda c: writer.consider(c.record, c.request_line))
    assert writer.commit() is None and policy.gave_up == 2
    reasons = {e["reason"]: (e["count"], e["custom_ids"]) for e in policy.reasons_list()}
    assert reasons == {
        "failed every time it was sent (3 attempts): the model server or the network kept "
        "failing": (1, ["busy"]),
        "rejected by the model server (HTTP 422): the request itself is refused, so sending "
        "it again would fail the same way": (1, ["bad"])}
    lines = retry_policy.describe(policy.reasons_list())
    assert any(line.startswith("1 request: rejected") and "custom_id bad" in line
               for line in lines)


@pytest.mark.parametrize("error,retriable", [
    ({"type": "NonRetriableHttpStatus", "status_code": 400}, False),
    ({"type": "RetriableHttpStatus", "status_code": 404}, True),  # the server retried it
    ({"type": None, "status_code": 413}, False),
    ({"type": "HttpStatus", "status_code": 408}, True),
    ({"type": "HttpStatus", "status_code": 429}, True),
    ({"type": "Timeout", "status_code": None}, True),
    ({"type": None, "status_code": 500}, True),
])
def test_which_errors_are_retriable(error, retriable):
    assert retry_policy.is_retriable({"status": "error", "error": error}) is retriable
    for status in ("truncated", "invalid_json", "schema_invalid", "missing"):
        assert retry_policy.is_retriable({"status": status, "error": error}) is True


def test_given_up_ids_are_capped_at_ten_per_reason():
    policy = retry_policy.RetryPolicy(retry_file.RETRYABLE, 1)
    for i in range(13):
        assert policy.decide({"custom_id": f"t{i}", "status": "truncated", "attempts": 1,
                              "retriable": True}) == "give_up"
    assert policy.decide({"custom_id": "p", "status": "pending"}) is None
    (entry,) = policy.reasons_list()
    assert entry["count"] == 13 and entry["custom_ids"] == [f"t{i}" for i in range(10)]
    assert retry_policy.describe([entry])[0].endswith("t9 and 3 more)")
