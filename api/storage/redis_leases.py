"""RedisStore's side of a worker that died: its lease expired, and its job or trial is taken over.

RQ finds the worker's RQ job abandoned (its registry cleanup, run in a live worker) and runs it again: that run
takes the job over (``claim_job(take_over=True)`` requeues it from its checkpoint first). The abandoned RQ job stays
the job's one carrier, so RQ's retries count every run and ``fail_abandoned`` ends the job once they are spent.
With no live worker nothing runs RQ's cleanup; ``sweep_expired`` (each API replica, api/backend.py) then shows
the truth meanwhile: a job whose lease expired is ``queued`` again (no new RQ job: the abandoned one still carries
it), a ``cancelling`` one ends ``cancelled``, and the expired trials of a ``cancelling`` search end ``cancelled``.
"""

import logging
import time

from api.errors import JobNotFound
from api.storage import lifecycle
from api.storage.base import JobRecord
from api.storage.lifecycle import CANCELLING, QUEUED, RUNNING
from api.storage.redis_tx import RedisTx

log = logging.getLogger("api.redis")


class LeaseRecovery:
    """Mixed into RedisStore, whose ``redis``, ``_key``, ``atomic`` and ``get_job`` these use."""

    def _expired(self, tx: RedisTx, key: str) -> bool:
        tx.pipe.watch(self._key("lease", key))
        return not tx.pipe.exists(self._key("lease", key))

    def _requeue_expired(self, tx: RedisTx, job_id: str) -> JobRecord | None:
        job = tx.job(job_id)
        if job is None or job.status not in (RUNNING, CANCELLING) or job.stage == "trials" or not self._expired(tx, job_id):
            return None
        reason = ("the worker stopped renewing its lease (killed or cut off); resumed from the checkpoint after "
                  f"epoch {job.epochs_done}")
        log.warning("job %s: lease expired; %s", job_id, "requeued" if job.status == RUNNING else "cancelled")
        requeued = lifecycle.requeue(tx, job, time.time(), reason)
        # no new RQ job: the abandoned one carries it, so RQ's retries count each run (a new one began them again,
        # and a job that kept killing its workers looped for ever)
        tx.ready_ids = [j for j in tx.ready_ids if j != job_id]
        return requeued

    def _release_expired_trials(self, tx: RedisTx, job_id: str) -> list[int]:
        job = tx.job(job_id)
        if job is None or job.stage != "trials":
            return []
        expired = [t["index"] for t in tx.trials(job_id) if t["status"] == "running"
                   and self._expired(tx, f"{job_id}|{t['index']}")]
        for index in expired:
            log.warning("search %s: trial %s lost its worker; it runs again", job_id, index)
            lifecycle.release_trial(tx, job_id, index, time.time())
        return expired

    def lease_alive(self, job_id: str) -> bool:
        """Whether a worker still holds the job (or one of its running trials)."""
        try:
            job = self.get_job(job_id)
        except JobNotFound:
            return False
        keys = [f"{job_id}|{t['index']}" for t in job.trials or [] if t["status"] == "running"] if job.stage == "trials" \
            else [job_id] if job.status in (RUNNING, CANCELLING) else []
        return bool(keys) and bool(self.redis.exists(*[self._key("lease", k) for k in keys]))

    def recover_expired(self) -> list[JobRecord]:
        """Every job whose worker's lease expired goes back to the queue from its checkpoint, with a restart
        note in its history (``cancelling`` ones end ``cancelled``). The RQ runner does this per job when RQ
        runs an abandoned job again (``claim_job(take_over=True)``); this is the same for all of them at once."""
        running = self.atomic(lambda tx: [j.job_id for j in tx.jobs((RUNNING, CANCELLING)) if j.stage != "trials"])
        changed = [self.atomic(lambda tx: self._requeue_expired(tx, job_id)) for job_id in running]
        return [self.get_job(j.job_id) for j in changed if j is not None]

    def recover_expired_trials(self) -> list[str]:
        """Running trials whose worker's lease expired go back to pending; returns their job ids."""
        searches = self.atomic(lambda tx: [j.job_id for j in tx.jobs((QUEUED, RUNNING, CANCELLING)) if j.stage == "trials"])
        return [job_id for job_id in searches if self.atomic(lambda tx: self._release_expired_trials(tx, job_id))]

    def sweep_expired(self) -> list[str]:
        """With no live worker (nothing runs RQ's cleanup): jobs whose lease expired are requeued or end cancelled,
        and a cancelling search's expired trials end cancelled (they would not run again). Returns the job ids."""
        def cancel_trials(tx: RedisTx, job_id: str) -> bool:
            job = tx.job(job_id)
            expired = [] if job is None or job.status != CANCELLING or job.stage != "trials" else [
                t["index"] for t in tx.trials(job_id) if t["status"] == "running" and self._expired(tx, f"{job_id}|{t['index']}")]
            for index in expired:
                lifecycle.finish_trial(tx, job_id, index, "cancelled", time.time())
            return bool(expired)

        searches = self.atomic(lambda tx: [j.job_id for j in tx.jobs((CANCELLING,)) if j.stage == "trials"])
        return [j.job_id for j in self.recover_expired()] + [
            job_id for job_id in searches if self.atomic(lambda tx: cancel_trials(tx, job_id))]

    def fail_abandoned(self, job_id: str, error: str) -> None:
        """RQ gave up on the job (its workers kept dying): it ends failed, or cancelled if a cancel was asked
        (as ``requeue`` ends it); a search: its orphaned trials fail. A job the sweep put back in the queue ends
        too: the RQ job given up was its one carrier."""
        def step(tx: RedisTx) -> None:
            job, now = tx.job(job_id), time.time()
            if job is not None and job.stage == "trials":
                for t in [t for t in tx.trials(job_id) if t["status"] == "running" and self._expired(tx, f"{job_id}|{t['index']}")]:
                    lifecycle.finish_trial(tx, job_id, t["index"], "failed", now, error=error)
            elif job is not None and (job.status == QUEUED or job.status in (RUNNING, CANCELLING) and self._expired(tx, job_id)):
                end = lifecycle.CANCELLED if job.status == CANCELLING else lifecycle.FAILED
                lifecycle.finish(tx, job, end, now, use_checkpoint=True, error=error)

        self.atomic(step)
