"""Rejections: the one exception a request (or a clip, or a spool write) is refused with, and every code it may carry.

A `Rejection` is a mistake the caller can fix or a limit it ran into: it becomes an `ok: false` reply with `code`,
`reason` and, when one field of the request is at fault, `field`. `internal` is the only code for the daemon's own
failures. No imports from the rest of the package, so every layer (protocol, audio, spool, daemon) can raise it.
"""

from __future__ import annotations

from typing import Any

# Every code the daemon may answer with; docs/protocol.md's table is checked against this (tests/ingest).
REJECT_CODES: dict[str, str] = {
    "bad_json": "the header frame is not UTF-8 JSON (garbage, truncated, nested too deep)",
    "bad_header": "JSON but not a request: not an object, `v`/`cmd` missing or mistyped, or the wrong number of "
                  "frames (a data frame on a command without data, three frames)",
    "unsupported_version": "`v` is a number other than 1",
    "unknown_command": "`cmd` is not in the command table (the reason lists the known ones)",
    "bad_request": "a field of the command is missing, mistyped, out of range or not one of its fields; `field` "
                   "names it (the value is never echoed)",
    "unauthorized": "the command, or one of its fields (`field`), needs a trusted peer (ipc, or a CURVE key in "
                    "`ingest.trusted_client_keys`)",
    "forbidden_path": "a trusted peer's file path outside the configured folders (`ingest.avatar_dirs`, "
                      "`output_policy.file_dirs`), or missing: the two get the same answer",
    "unavailable": "the command is in the table but this server has no handler for it",
    "missing_audio": "an audio command without its data frame",
    "empty_audio": "the data frame is zero bytes, or a valid file holds no samples",
    "undecodable_audio": "not a supported format, corrupt, a decode error, raw PCM not a whole number of frames, "
                         "NaN/inf samples",
    "too_long": "longer than `ingest.max_clip_seconds`; decoding stops as soon as the limit is passed",
    "too_short": "shorter than `ingest.min_clip_seconds`",
    "oversize": "header frame over 64 KiB, or a payload larger than `queue.max_spool_bytes` (it could never be queued)",
    "queue_full": "accepting it would exceed `queue.max_clips`, `queue.max_queued_seconds` or `queue.max_spool_bytes` "
                  "(the reason says which)",
    "disk_full": "the state directory's disk is under `storage.min_free_bytes` / `storage.min_free_percent` (or "
                 "full); nothing was queued; retry once space returns (the room stays on air meanwhile)",
    "not_found": "`cancel` or `move` of a clip that is not pending or playing (or `move` relative to one); "
                 "`output_remove` of an unknown output name",
    "not_pending": "`move` of a clip (`segment_id`), or relative to a clip (`before`/`after`), that is on air or "
                   "rendered ahead: only pending clips can be moved",
    "not_on_air": "`skip` when nothing is on air, or with a `segment_id` that is not (or no longer) the clip on air: "
                  "nothing was skipped",
    "already_exists": "`output_add` with the name of an existing output",
    "bad_output": "`output_add` with a URL that is no output (not rtmp://, rtmps:// or a .flv/.mp4 path), or "
                  "`segment_seconds` on a stream",
    "too_many_outputs": "`output_add` over `output_policy.max_outputs`",
    "unsupported_image": "`set_avatar` / `overlay_set` data that is not PNG, JPEG or WebP with a readable header (an empty frame too)",
    "image_too_large": "an image over `ingest.max_image_bytes`",
    "image_too_many_pixels": "an image whose header (any frame, canvas or bitstream), or whose decoder, reports "
                             "more than `ingest.max_image_pixels`; refused before a picture that size is decoded",
    "undecodable_image": "an image whose header passed but whose picture cannot be decoded",
    "prompt_too_long": "a prompt over `ingest.max_prompt_chars`",
    "text_too_long": "a clip's caption `text`, a `captions` cue's text or `overlay_set` text over "
                     "`ingest.max_text_chars`",
    "unknown_layer": "`overlay_show` / `overlay_hide`, or a clip's `overlays` cue, naming a layer that is not defined "
                     "(the reason lists them)",
    "cue_outside_clip": "a clip's `captions` / `overlays` cue with start < 0, end <= start or end past the decoded "
                        "clip's duration; nothing was queued",
    "too_many_layers": "`overlay_set` of a new layer over `overlays.max_layers`",
    "meta_too_deep": "a clip's `meta` nested deeper than `ingest.max_meta_depth`; nothing was queued",
    "captions_too_long": "a clip's caption characters (`text` plus every `captions` cue's text) over "
                         "`ingest.max_caption_chars`; nothing was queued",
    "captions_too_large": "a clip's caption lines, measured as they would be rendered, over "
                          "`overlays.max_caption_pixels`; nothing was queued",
    "captions_over_budget": "the caption lines of the clips queued and not yet aired, with this clip's, would take "
                            "more than `overlays.caption_budget_bytes`; retry when some have aired",
    "text_too_large": "`overlay_set` text that, wrapped and rendered, would cover more than "
                      "`overlays.max_layer_pixels`; measured before anything is drawn",
    "id_too_long": "`id`, `segment_id` or `name` over `ingest.max_id_chars`",
    "rate_limited": "the peer is over `ingest.rate_per_s` (burst `ingest.rate_burst`); the reason says when to retry",
    "busy": "too many requests waiting or running (`ingest.max_inflight_per_peer`, `ingest.max_inflight`), or the "
            "daemon is stopping",
    "unknown_stream": "`clip_append` / `clip_close` / `clip_abort` of a `segment_id` that is no streamed clip (never "
                      "opened, or already finished or dropped)",
    "stream_closed": "`clip_append` of a stream that was closed, cut (its idle timeout passed) or aborted, "
                     "`clip_close` of one aborted; the reason says which (a close resent to a closed stream is "
                     "answered again, `duplicate: true`)",
    "sequence_gap": "`clip_append` whose `seq` is past the next one expected (the reason names it); a `seq` already "
                    "stored is acknowledged as a duplicate instead",
    "stream_too_large": "`clip_append` that would take a stream over `streams.max_stream_bytes`; the stream stays open",
    "stream_timed_out": "`clip_append` / `clip_close` of a stream that went longer than `streams.idle_timeout_s` "
                        "without an append: it was closed as cut (event `interrupted`, reason `stream_timeout`)",
    "too_many_streams": "`clip_open` over `streams.max_open` open streams in all, or `streams.max_open_per_peer` for "
                        "this peer",
    "internal": "a bug or an I/O error in the daemon; the request changed nothing",
}


class Rejection(Exception):
    """A refusal with a machine-readable `code` (one of REJECT_CODES), a `reason` for humans and, optionally, the
    request `field` at fault. Subclasses only name where it was raised."""

    def __init__(self, code: str, reason: str, field: str | None = None) -> None:
        if code not in REJECT_CODES:
            raise LookupError(f"unknown rejection code {code!r}: add it to flashtalk_live.errors.REJECT_CODES")
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.field = field

    def reply_fields(self) -> dict[str, Any]:
        """code, reason and field (when set), as they go into an `ok: false` reply."""
        out: dict[str, Any] = {"code": self.code, "reason": self.reason}
        if self.field is not None:
            out["field"] = self.field
        return out
