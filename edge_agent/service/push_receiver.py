"""The board's one transfer slot: a push's begin, chunks, end and abort, reassembled (delivery.transfer).

One transfer at a time: a begin that arrives while another transfer or a model change is under way
is refused at once ("busy with transfer X") -- unless the transfer holding the slot is unsigned or
has made no progress for PREEMPT_IDLE_S, which a signed push may take over. Only progress re-arms a
transfer's timeout (models.transfer_timeout_s); a resent begin does not. A complete transfer goes to
service.model_changes to be installed on its job thread.

What an unauthenticated client can do here is bounded: its chunks are dropped unless they are the
ones a signed begin listed, and it can neither re-arm a transfer's timeout nor abort it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge_agent.config import ModelsConfig
from edge_agent.delivery.request_limits import LogLimiter, clip
from edge_agent.delivery.transfer import StrayChunk, Transfer, TransferError
from edge_agent.delivery.update_protocol import ProtocolError, PushBegin, abort_token_matches, parse_begin
from edge_agent.service.model_changes import ModelChanges
from edge_agent.service.model_install import ModelInstaller
from edge_agent.service.request_gate import Refusal, Request
from edge_agent.service.update_answers import UpdateAnswers

logger = logging.getLogger(__name__)

MAX_MISSING_LISTED = 1000
PREEMPT_IDLE_S = 15.0  # a transfer without progress this long (or a quarter of the timeout) may be taken over


class PushReceiver:
    """Receives the pushes of one board, one transfer at a time, for every pipeline."""

    def __init__(self, settings: ModelsConfig, incoming: Path, installer: ModelInstaller, changes: ModelChanges,
                 answers: UpdateAnswers, log: LogLimiter):
        self.settings = settings
        self.incoming = incoming  # where transfers are written (state_dir/incoming)
        self.installer = installer
        self.changes = changes
        self.answers = answers
        self._log = log
        self.dropped_chunks = 0  # chunks of no transfer this board holds, or not the ones its begin lists
        self._transfer: Transfer | None = None
        self._transfer_pipeline = ""

    def refusal(self) -> str:
        """Why no new push or rollback can start now ("" when one can)."""
        if not self.settings.enabled:
            return "model updates are disabled on this device (models.enabled = false)"
        if self._transfer is not None:
            return f"busy with transfer {self._transfer.transfer_id}: try again when it has finished"
        busy_with = self.changes.busy_with()
        if busy_with:
            return f"busy with {busy_with}: try again when it has finished"
        return ""

    # --- requests ------------------------------------------------------------------
    def begin(self, request: Request) -> None:
        transfer_id = request.transfer_id
        if self.answers.is_finished(transfer_id):
            self.answers.repeat(transfer_id)  # a resent begin of a push that is over
            return
        if self._transfer is not None and self._transfer.transfer_id == transfer_id:
            # the same pusher asking again: answer, but do not re-arm the timeout (only progress does)
            self.answers.event("accepted", transfer_id=transfer_id, pipeline=self._transfer_pipeline)
            return
        try:
            begin = parse_begin(request.data, transfer_id)
            pipeline = self.changes.resolve_pipeline(begin.pipeline)
        except ProtocolError as err:
            self._refuse(transfer_id, "", str(err))
            return
        self._preempt_for(request)
        refusal = self.refusal()
        if refusal:
            self._refuse(transfer_id, pipeline, refusal)
            return
        if self._already_active(begin, pipeline):
            return
        try:
            self._transfer = Transfer(begin, self.incoming, int(self.settings.max_mb * 1024 * 1024))
        except TransferError as err:
            self._refuse(transfer_id, pipeline, str(err))
            return
        self._transfer.signed = bool(request.signed_by)
        self._transfer_pipeline = pipeline
        signer = f"signed by key {request.signed_by}" if request.signed_by else "UNSIGNED"
        logger.info("model transfer %s for pipeline %s (%s): %d bytes in %d chunks", transfer_id, pipeline, signer,
                    begin.size, begin.chunks)
        self.answers.event("accepted", transfer_id=transfer_id, pipeline=pipeline)

    def _preempt_for(self, request: Request) -> None:
        """A signed push may take the slot of an unsigned transfer, or of one that stopped making progress."""
        transfer = self._transfer
        if transfer is None or not request.signed_by:
            return
        idle_s = transfer.idle_s()
        if transfer.signed and idle_s < min(PREEMPT_IDLE_S, self.settings.transfer_timeout_s / 4):
            return
        why = "it is unsigned" if not transfer.signed else f"it made no progress for {idle_s:.0f} s"
        logger.warning("model transfer %s given up for the signed transfer %s (%s)", transfer.transfer_id,
                       request.transfer_id, why)
        self._fail(f"pre-empted by the signed transfer {request.transfer_id} ({why})")

    def _already_active(self, begin: PushBegin, pipeline: str) -> bool:
        """A push of the bundle that is already active succeeds without a transfer."""
        active = self.installer.already_active(pipeline, begin.sha256)
        if active is None:
            return False
        self.answers.finished(begin.transfer_id)
        self.answers.event("activated", transfer_id=begin.transfer_id, pipeline=pipeline, reason="already active",
                           previous=active.describe(), new=active.describe())
        return True

    def chunk(self, request: Request) -> None:
        transfer = self._transfer
        if transfer is None or transfer.transfer_id != request.transfer_id:
            # a transfer this board never accepted (a group push it refused or is not named in), one that
            # is over, or noise: dropped and counted
            self.dropped_chunks += 1
            self._log.log(logging.INFO, "chunk-unknown", "chunk %d of transfer %s, which this board does not hold, "
                          "dropped (%d so far)", request.index, clip(request.transfer_id, 80), self.dropped_chunks)
            return
        try:
            transfer.write_chunk(request.index, request.payload)
        except StrayChunk as err:  # not this transfer's chunk: someone else on the broker; the transfer goes on
            self.dropped_chunks += 1
            self._log.log(logging.WARNING, "chunk-stray", "dropped a chunk that is not the transfer's: %s", err)
        except TransferError as err:
            self._fail(str(err))

    def end(self, request: Request) -> None:
        transfer_id = request.transfer_id
        transfer = self._transfer
        if transfer is None or transfer.transfer_id != transfer_id:
            if not self.answers.repeat(transfer_id):
                self._refuse(transfer_id, "", f"unknown transfer {transfer_id}: its begin never arrived or it "
                                              "expired; push again")
            return
        missing = transfer.missing()
        if missing:
            self.answers.event("missing", transfer_id=transfer_id, pipeline=self._transfer_pipeline,
                               reason=f"{len(missing)} of {transfer.begin.chunks} chunks have not arrived",
                               missing=missing[:MAX_MISSING_LISTED])
            return
        try:
            path = transfer.complete()
        except TransferError as err:
            self._fail(str(err))
            return
        pipeline = self._transfer_pipeline
        label = clip(transfer.begin.name, 128) if transfer.begin.name else f"the bundle of transfer {transfer_id}"
        allow_downgrade = transfer.begin.allow_downgrade
        self._transfer = None
        self.answers.finished(transfer_id)
        self.answers.event("received", transfer_id=transfer_id, pipeline=pipeline)
        self.changes.start(f"installing transfer {transfer_id}",
                           lambda: self.changes.install(transfer_id, pipeline, path, label, allow_downgrade))

    def abort(self, request: Request) -> None:
        """The pusher gave up (timeout, Ctrl-C, a broker refusing its chunks): free the board at once.
        Only the pusher that began the transfer may: its signature, or (unsigned transfers) its token."""
        transfer = self._transfer
        if transfer is None or transfer.transfer_id != request.transfer_id:
            return
        if not request.signed_by and not abort_token_matches(transfer.begin, request.data.get("abort_token")):
            self.answers.refused(Refusal(f"an abort of transfer {transfer.transfer_id} without the token its begin "
                                         "named: only the pusher that began a transfer can abort it",
                                         "abort-unauthenticated"))
            return
        reason = request.data.get("reason") or "no reason given"
        self._fail(f"aborted by the pusher: {clip(reason, 300)}")

    # --- the transfer's end --------------------------------------------------------
    def expire(self) -> None:
        """Give up a transfer that made no progress within models.transfer_timeout_s."""
        transfer = self._transfer
        if transfer is not None and transfer.idle_s() > self.settings.transfer_timeout_s:
            self._fail(f"the transfer timed out: nothing arrived for {self.settings.transfer_timeout_s:g} s "
                       "(no new chunk; models.transfer_timeout_s); push again")

    def discard(self) -> None:
        """Delete an unfinished transfer (the updater stops)."""
        if self._transfer is not None:
            self._transfer.discard()
            self._transfer = None

    def _refuse(self, transfer_id: str, pipeline: str, reason: str) -> None:
        self.answers.finished(transfer_id)
        self.answers.event("rejected", transfer_id=transfer_id, pipeline=pipeline, reason=reason,
                           previous=self.installer.running_ref(pipeline))

    def _fail(self, reason: str) -> None:
        transfer, self._transfer = self._transfer, None
        if transfer is None:
            return
        transfer.discard()
        self._refuse(transfer.transfer_id, self._transfer_pipeline, reason)
