"""Batch processing: requests finish in a shuffled order at --rate, or when told (--manual).

A background thread ticks every few milliseconds: validating batches start, running batches
finish `rate` requests per second each (0 = as fast as possible, in chunks so the server stays
responsive), finished batches settle, cancelling batches become cancelled, and the sandbox
clock stamps `expired_at` (or, with --openai-compat, expires unfinished batches).
"""

from __future__ import annotations

import json
import threading
import time

from . import mock_models
from .options import Options
from .store import CANCELLED, COMPLETED, EXPIRED, FAILED, PENDING, Batch, Store, request_uuid

TICK_SECONDS = 0.02
CHUNK = 256  # requests finished per lock hold
FAST_QUOTA = 4096  # per batch per tick with --rate 0
FINALIZING_SECONDS = 0.05
IN_FLIGHT = 8  # requests shown as in_progress in /results while a batch runs
PRICES = {"24h": (0.10, 0.40), "1h": (0.20, 0.80)}  # USD per million input/output tokens


def price_per_token(window: str) -> tuple[float, float]:
    per_million = PRICES.get(window, PRICES["24h"])
    return per_million[0] / 1e6, per_million[1] / 1e6


class Engine:
    def __init__(self, store: Store, options: Options) -> None:
        self.store = store
        self.options = options
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sandbox-engine", daemon=True)
        self.last = time.monotonic()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - keep the engine alive, say why
                import sys
                import traceback
                sys.stderr.write(f"sandbox engine error: {exc}\n{traceback.format_exc()}")
            self.stopping.wait(TICK_SECONDS)

    # --- the background tick ------------------------------------------------------------
    def tick(self) -> None:
        now_mono = time.monotonic()
        dt, self.last = now_mono - self.last, now_mono
        quotas: list[tuple[Batch, int]] = []
        with self.store.lock:
            self.check_expiry()
            if self.options.manual:
                return
            now = self.store.clock.now()
            for batch in list(self.store.batches.values()):
                if batch.deleted and batch.status != "cancelling":
                    continue
                quota = self._step(batch, now, dt)
                if quota:
                    quotas.append((batch, quota))
        for batch, quota in quotas:
            self.process(batch, quota)

    def _step(self, batch: Batch, now: float, dt: float) -> int:
        """Status moves due now; returns how many requests this batch may finish."""
        if batch.status == "validating" and now >= batch.validate_until:
            self._start(batch)
        if batch.status == "cancelling" and not batch.stuck:
            self.store.mark_cancelled(batch)
        elif batch.status == "finalizing" and now >= batch.finalize_after:
            self._settle(batch)
        elif batch.status == "in_progress":
            if batch.pending == 0:
                self._finalizing(batch, now)
                return 0
            if self.options.rate <= 0:
                return FAST_QUOTA
            batch.credit = min(batch.credit + self.options.rate * dt, max(self.options.rate, 1))
            quota = int(batch.credit)
            batch.credit -= quota
            return quota
        return 0

    def _start(self, batch: Batch) -> None:
        batch.status = "in_progress"
        batch.times.setdefault("in_progress_at", self.store.now())

    def _finalizing(self, batch: Batch, now: float) -> None:
        batch.status = "finalizing"
        batch.times["finalizing_at"] = self.store.now()
        batch.finalize_after = now + FINALIZING_SECONDS

    def _settle(self, batch: Batch) -> None:
        self.store.finish(batch)

    def check_expiry(self) -> None:
        """Stamp expired_at past expires_at; --openai-compat expires unfinished batches."""
        now = self.store.now()
        for batch in self.store.batches.values():
            if now < batch.expires_at or batch.times.get("expired_at"):
                continue
            if not self.options.openai_compat:
                batch.times["expired_at"] = now
            elif not batch.terminal:
                self._expire(batch, now)

    def _expire(self, batch: Batch, now: int) -> None:
        lines, indices = [], []
        for idx in batch.queue[batch.qpos:]:
            custom_id = self._custom_id(batch, idx)
            lines.append(_line(batch, idx, custom_id, None, {
                "code": "batch_expired",
                "message": "This request could not be executed before the completion window "
                           "expired."}))
            indices.append(idx)
        for idx, off in zip(indices, batch.errors.view.append(lines), strict=False):
            batch.state[idx] = EXPIRED
            batch.result_off[idx] = off
        batch.failed += len(indices)
        batch.qpos = len(batch.queue)
        batch.status = "expired"
        batch.times["expired_at"] = now

    def _custom_id(self, batch: Batch, idx: int) -> str:
        source = self.store.files[batch.input_file_id]
        with open(source.path, "rb") as f:
            f.seek(source.index.offsets[idx])
            return json.loads(f.read(source.index.lengths[idx]))["custom_id"]

    # --- finishing requests -------------------------------------------------------------
    def process(self, batch: Batch, count: int | None) -> int:
        """Finish the next `count` (None: all) pending requests of the batch."""
        done = 0
        while count is None or done < count:
            with self.store.lock:
                if batch.status != "in_progress" or batch.pending == 0:
                    break
                size = min(CHUNK, batch.pending, (count - done) if count is not None else CHUNK)
                self._finish_chunk(batch, size)
                done += size
        return done

    def _finish_chunk(self, batch: Batch, size: int) -> None:
        source = self.store.files[batch.input_file_id]
        picked = batch.queue[batch.qpos:batch.qpos + size]
        batch.qpos += size
        created = self.store.now()
        ok_lines, ok_idx, err_lines, err_idx = [], [], [], []
        price_in, price_out = price_per_token(batch.completion_window)
        with open(source.path, "rb") as f:
            for idx in picked:
                f.seek(source.index.offsets[idx])
                request = json.loads(f.read(source.index.lengths[idx]))
                rid = request_uuid(batch.id, idx)
                body = request["body"]
                if isinstance(body, dict):
                    body.pop("priority", None)
                outcome = mock_models.respond(request["url"], body, rid, created)
                if outcome.error is None:
                    ok_lines.append(_line(batch, idx, request["custom_id"], {
                        "status_code": 200, "request_id": None, "body": outcome.body}, None))
                    ok_idx.append(idx)
                    batch.prompt_tokens += outcome.prompt_tokens
                    batch.completion_tokens += outcome.completion_tokens
                    batch.cost += outcome.prompt_tokens * price_in + \
                        outcome.completion_tokens * price_out
                else:
                    err_lines.append(_line(batch, idx, request["custom_id"], None,
                                           {"code": None, "message": outcome.error}))
                    err_idx.append(idx)
        for idx, off in zip(ok_idx, batch.output.view.append(ok_lines), strict=False):
            batch.state[idx] = COMPLETED
            batch.result_off[idx] = off
        for idx, off in zip(err_idx, batch.errors.view.append(err_lines), strict=False):
            batch.state[idx] = FAILED
            batch.result_off[idx] = off
        batch.completed += len(ok_idx)
        batch.failed += len(err_idx)

    # --- manual control -----------------------------------------------------------------
    def advance(self, batch_id: str | None, count: int | None) -> list[dict]:
        """/_sandbox/advance: start, finish N (all) requests, settle; returns what moved."""
        with self.store.lock:
            if batch_id:
                targets = [self.store.get_batch(batch_id)]
            else:
                targets = [b for b in self.store.batches.values() if not b.deleted]
        report = []
        for batch in targets:
            with self.store.lock:
                if batch.status == "validating":
                    self._start(batch)
            finished = self.process(batch, count)
            with self.store.lock:
                if batch.status == "cancelling" and not batch.stuck:
                    self.store.mark_cancelled(batch)
                elif batch.status in ("in_progress", "finalizing") and batch.pending == 0:
                    self.store.finish(batch)
                report.append({"id": batch.id, "status": batch.status, "finished": finished,
                               "pending": batch.pending})
        return report


def _line(batch: Batch, idx: int, custom_id: str, response: dict | None,
          error: dict | None) -> bytes:
    record = {"id": f"batch_req_{request_uuid(batch.id, idx)}", "custom_id": custom_id,
              "response": response, "error": error}
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


__all__ = ["Engine", "PENDING", "CANCELLED"]
