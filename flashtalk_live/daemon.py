"""The daemon: joins the spool, playout, the renderers, the broadcast (compositor, encoder, outputs), ingest and the
console for one room, and runs their threads."""

from __future__ import annotations

import errno
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from flashtalk_live import fdreserve
from flashtalk_live.compose.compositor import Compositor
from flashtalk_live.console import AirTap, Console, console_url, resolve_token, start_console
from flashtalk_live.console.health import gpu_memory
from flashtalk_live.errors import Rejection
from flashtalk_live.events import EventBus
from flashtalk_live.ingest.auth import confine_output_file, confine_path
from flashtalk_live.ingest.commands import (
    Call, NoArgs, OutputAddArgs, OutputRemoveArgs, OverlayNameArgs, OverlaySetArgs, OverlayShowArgs, SetAvatarArgs,
)
from flashtalk_live.ingest.limits import check_image
from flashtalk_live.ingest.server import IngestServer
from flashtalk_live.latency import PushToAir
from flashtalk_live.log import configure as configure_logging, get_logger, meta_summary
from flashtalk_live.media.broadcast import Broadcast
from flashtalk_live.media.encoder import Encoder
from flashtalk_live.playout.pacing import LookaheadClosed
from flashtalk_live.playout.playout import Playout
from flashtalk_live.metrics import serve_metrics
from flashtalk_live.osthread import name_os_thread
from flashtalk_live.outputs.manager import OutputManager, OutputRejected
from flashtalk_live.probes import RoomProbes, Vitals
from flashtalk_live.queue.spool import Spool
from flashtalk_live.queue.streams import StreamRegistry
from flashtalk_live.renderers.base import Renderer
from flashtalk_live.renderers.drill import with_drills
from flashtalk_live.renderers.kinds import RendererFactory, renderer_kind
from flashtalk_live import images
from flashtalk_live.images import ImageError, ImageTooLarge, default_portrait, load_image
from flashtalk_live.renderers.still import StillRenderer
from flashtalk_live.renderers.supervisor import RendererSupervisor
from flashtalk_live.sdnotify import sd_notify
from flashtalk_live.settings import ConfigError, OutputSettings, Settings
from flashtalk_live.statelock import EndpointBusy, StateLock
from flashtalk_live.storage import DiskWatermark

RESERVED_FDS = 16  # held for output children and recording files (fdreserve.py): two spawns' worth
CAPTION_CHARS_PER_S = 12.0  # a streamed clip's `text` before its length is known: about a speaker's pace
EXIT_FATAL = 70  # EX_SOFTWARE: a loop of the daemon died; systemd's Restart= brings it back


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Daemon:
    """One live room: every part built from Settings, three threads (ingest, render, broadcast) plus the caller's."""

    def __init__(self, settings: Settings, *, renderer_factory: RendererFactory | None = None,
                 still: Renderer | None = None, parallel: Any = None) -> None:
        self.s = settings
        self.log = get_logger("daemon")
        # Which room holds a lock (statelock.py), for the one line that refuses a second daemon on its paths.
        self.room_note = f"room {settings.room or '-'} in {settings.path(settings.state_dir)}"
        self.state = "starting"
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self._first_render_mono: float | None = None  # the first chunk rendered (the still renderer's)
        Path(settings.path(settings.state_dir)).mkdir(parents=True, exist_ok=True)
        self.events = EventBus()
        self.events.subscribe(self._log_event)
        self.spool = Spool.from_settings(settings.expanded(settings.queue), settings.encoder, settings.storage)
        if self.spool.quarantined is not None:
            aside, why = self.spool.quarantined
            self.log.error("spool_quarantined", moved_to=str(aside), fresh=str(self.spool.db_path), error=why,
                           salvage=f"flashtalk-live spool salvage {aside}")
            self.events.publish("spool_quarantined", moved_to=str(aside), fresh=str(self.spool.db_path), error=why)
        recovered = self.spool.pending(limit=20)
        if self.spool.recovered:
            self.log.info("queue_recovered", clips=len(self.spool.recovered), segment_ids=self.spool.recovered[:20])
        elif recovered:
            self.log.info("queue_pending", clips=self.spool.stats()["pending"],
                          segment_ids=[e.segment_id for e in recovered])
        self.disk = DiskWatermark(self.spool.dir, settings.storage.min_free_bytes, settings.storage.min_free_percent,
                                  publish=self.events.publish, log=self.log)
        self.disk.check()
        v = settings.video
        # Streamed clips (queue/streams.py): rebuilt from the spool before the timeline can take one.
        self.streams = StreamRegistry(settings.streams, settings.ingest, settings.encoder, self.spool,
                                      chunk_s=v.chunk_frames / v.fps)
        try:
            self.reference = load_image(v.reference_image, settings.ingest.max_image_pixels) \
                if v.reference_image else default_portrait()
        except (ImageError, OSError) as e:  # the operator's configuration: exit 2 with one line
            raise ConfigError(f"video.reference_image: {e}") from None
        self.prompt = v.prompt
        self.still = with_drills(still or StillRenderer.from_settings(settings), settings.renderer, v.fps)
        self.still.start_session(self.reference, v.prompt)
        if renderer_factory is None:
            renderer_factory = renderer_kind(settings.renderer.kind).factory(settings, self.events, parallel)
        load = None if renderer_factory is None else \
            (lambda f=renderer_factory: with_drills(f(settings), settings.renderer, v.fps, v.chunk_frames))
        self.renderers = RendererSupervisor(settings.renderer, v, self.still, load, self.reference)
        self.encoder = Encoder(settings.encoder, v.width, v.height, v.fps)
        self.compositor = Compositor(settings.overlays, v.width, v.height, v.fps,
                                     max_image_pixels=settings.ingest.max_image_pixels)
        self._log_overlays()
        self.outputs = OutputManager.for_encoder(settings.output_policy, self.events, self.encoder)
        for o in settings.outputs:
            self.outputs.add(self._expand_output(o))
        self.playout = Playout(settings, self.spool, self.events, self.renderers,
                               preferred_renderer=lambda: self.renderers.preferred,
                               media_time_s=lambda: self.encoder.frames / v.fps,
                               prepare=lambda rendered: self.compositor.prepare(rendered.chunk.frame_segments),
                               streams=self.streams)
        self.playout.set_avatar(self.reference, self.prompt)
        self.air = AirTap(settings.encoder.audio_rate, v.fps)  # the console's preview: each frame and its sound
        self.broadcast = Broadcast(self.playout.pacer, self.compositor, self.encoder, self.outputs, fps=v.fps,
                                   audio_rate=settings.encoder.audio_rate, tap=self.air.offer,
                                   on_frame=self.playout.aired, on_air=self._on_air)
        self.ingest = IngestServer(settings.expanded(settings.ingest), settings.encoder, self.spool, self.events, self.status, refuse_clips=self.disk.refusal,
                                   layers=self.compositor.names,
                                   edit=self.playout.editing, plan_of=self.playout.plan_of,
                                   on_air=lambda: self.playout.on_air,
                                   lock_note=self.room_note,
                                   check_captions=self.compositor.check_captions,
                                   streams=self.streams,
                                   handlers={
            "outputs": self._cmd_outputs, "output_add": self._cmd_output_add,
            "output_remove": self._cmd_output_remove, "set_avatar": self._cmd_set_avatar,
            "overlay_show": self._cmd_overlay_show, "overlay_hide": self._cmd_overlay_hide,
            "overlay_set": self._cmd_overlay_set,
        })
        self.events.subscribe(self.streams.on_event)  # a streamed clip's audio is dropped once it is gone
        self.latency = PushToAir(room_idle=self._room_idle, first_byte=self._first_byte)
        self.events.subscribe(self.latency.on_event)
        self._stop_render = threading.Event()
        self._stopped = threading.Event()
        self._pending_avatar: tuple[np.ndarray, str] | None = None
        self._avatar_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.fatal: str | None = None  # why a loop died: run_daemon exits non-zero
        self.metrics_server: Any = None  # the HTTP server (console or bare /metrics) once started
        self.metrics_port: int | None = None
        self.probes = RoomProbes(settings.probes, self.vitals)  # /livez, /readyz, /startupz on the metrics port
        # -- console (flashtalk_live/console/): the token is resolved before anything starts, so a bad token file
        # stops the start with exit 2.
        self.console: Console | None = None
        self.console_token: str | None = None
        self.console_token_source: str | None = None
        if settings.metrics.enabled and settings.console.enabled:
            self.console_token, where = resolve_token(settings.expanded(settings.console), settings.metrics.host,
                                                      settings.path(settings.state_dir))
            self.console_token_source = where
            self.log.info("console_token", source=where)
        # -- end console

    # -- events and commands ---------------------------------------------------------------------
    def _log_event(self, e: dict[str, Any]) -> None:
        fields = {k: v for k, v in e.items() if k not in ("type", "ts", "meta")}
        if "meta" in e:  # a producer's meta is its size in the log (clip_accepted has its keys), never its body
            fields["meta_bytes"] = meta_summary(e["meta"])["meta_bytes"]
        self.log.info(f"event_{e['type']}", **fields)

    def _log_overlays(self) -> None:
        c, o = self.compositor, self.s.overlays
        if not o.ai_label_enabled:
            self.log.warning("ai_label_off", setting="overlays.ai_label_enabled = false",
                             note="platforms require a visible label on AI-generated hosts")
        if not c.system_font:
            self.log.warning("overlay_font_missing", font_dirs=o.font_dirs, font=c.font_path,
                             note="no system font: captions and text layers draw with the AI label's font (ASCII and "
                                  "the labels' characters only); install fonts-noto-cjk or set overlays.font")
        elif not c.font_covers_cjk:
            self.log.warning("overlay_font_without_cjk", font=c.font_path,
                             note="Chinese text would draw as boxes: install fonts-noto-cjk or set overlays.font")
        if o.ai_label_enabled and not c.label_covered:
            self.log.warning("ai_label_glyphs_missing", text=o.ai_label.text, font=c.label_font[0],
                             note="some characters of the label draw as boxes: set overlays.font to a font with them")
        self.log.info("overlays", ai_label=o.ai_label.text if o.ai_label_enabled else None, font=c.font_path,
                      label_font=c.label_font[0],
                      layers=c.names(), captions=o.captions)
        self.events.subscribe(self._note_caption)

    def _note_caption(self, e: dict[str, Any]) -> None:
        """A queued clip's caption text and cues (checked by the ingest server before it was queued). A streamed
        clip's length is not known until its close: its `text` is timed over its declared duration, else a reading
        pace, until then."""
        if e["type"] == "dropped":  # cancelled or cleared before it aired: its captions leave the budget
            self.compositor.forget(e["segment_id"])
        if e["type"] == "stream_closed" and e.get("duration_s"):
            self.compositor.clip_length(e["segment_id"], float(e["duration_s"]))
        if e["type"] != "accepted":
            return
        meta = e.get("meta") or {}
        text = meta.get("text")
        text = text if isinstance(text, str) else ""
        duration = float(e["duration_s"]) or max(1.0, len(text) / CAPTION_CHARS_PER_S)
        self.compositor.note_clip(e["segment_id"], text, duration, captions=meta.get("captions"),
                                  overlays=meta.get("overlays"))

    def _cmd_overlay_show(self, call: Call[OverlayShowArgs]) -> dict[str, Any]:
        self.compositor.show(call.args.name, call.args.seconds)
        return {"applies": "next aired frame"}

    def _cmd_overlay_hide(self, call: Call[OverlayNameArgs]) -> dict[str, Any]:
        self.compositor.hide(call.args.name)
        return {"applies": "next aired frame"}

    def _cmd_overlay_set(self, call: Call[OverlaySetArgs]) -> dict[str, Any]:
        a = call.args.model_dump(exclude={"id", "name", "text"})
        text = call.args.text
        if (text is None) == (call.data is None):
            raise Rejection("bad_request", "overlay_set needs exactly one of `text` and an image data frame", "text")
        if call.data is not None:
            check_image(call.data, self.s.ingest)
        return {**self.compositor.set(call.args.name, text=text, image=call.data, **a),
                "applies": "next aired frame"}

    def plan_status(self) -> dict[str, Any]:
        return self.playout.status()

    def _room_idle(self) -> bool:
        """No clip on air and none queued but the one just accepted (latency.py's enqueue_idle)."""
        q = self.spool.stats()
        return self.playout.on_air is None and q["pending"] <= 1 and q["playing"] == 0

    def _first_byte(self, segment_id: str) -> float | None:
        live = self.streams.live(segment_id)
        return None if live is None else live.first_byte

    def _cmd_outputs(self, call: Call[NoArgs]) -> dict[str, Any]:
        return {"outputs": self.outputs.status()}

    def _cmd_output_add(self, call: Call[OutputAddArgs]) -> dict[str, Any]:
        """The output manager checks the URL by the output-kind table and answers its own rejection codes; the
        daemon adds only its file policy (files only inside output_policy.file_dirs)."""
        a = call.args
        spec = self._expand_output(OutputSettings(name=a.name, url=a.url, segment_seconds=a.segment_seconds))
        dirs = [self.s.path(d) for d in self.s.output_policy.file_dirs]
        self.outputs.add(spec, confine_file=lambda url: confine_output_file(url, dirs))
        return {"output": spec.name, "outputs": self.outputs.names()}

    def _expand_output(self, o: OutputSettings) -> OutputSettings:
        return o.model_copy(update={"url": self.s.path(o.url)})

    def _cmd_output_remove(self, call: Call[OutputRemoveArgs]) -> dict[str, Any]:
        self.outputs.remove(call.args.name)
        return {"outputs": self.outputs.names()}

    def _cmd_set_avatar(self, call: Call[SetAvatarArgs]) -> dict[str, Any]:
        a = call.args
        # A path only inside ingest.avatar_dirs (the table lets only trusted peers name one); the header is checked
        # against the size limits before anything is decoded.
        lim = self.s.ingest
        data = call.data
        if data is None and a.image:
            path = confine_path(a.image, [self.s.path(d) for d in lim.avatar_dirs], "ingest.avatar_dirs")
            try:
                with open(path, "rb") as f:
                    data = f.read(lim.max_image_bytes + 1)
            except OSError:  # unreadable reads like missing: the reply must not tell which files exist
                raise Rejection("forbidden_path", "not an allowed file: it must be an existing file inside "
                                                  "ingest.avatar_dirs", "image") from None
        if data is not None:
            check_image(data, lim)
            try:
                image = images.decode_image_bytes(data, "set_avatar image", lim.max_image_pixels)
            except ImageTooLarge as e:  # the header passed, but the picture itself is larger (limits.py)
                raise Rejection("image_too_many_pixels", str(e)) from None
            except ImageError as e:
                raise Rejection("undecodable_image", str(e)) from None
        else:
            image = self.reference
        prompt = a.prompt or self.prompt
        with self._avatar_lock:
            self._pending_avatar = (image, prompt)
        return {"applies": "next chunk boundary"}

    # -- threads -----------------------------------------------------------------------------------
    def _render_loop(self) -> None:
        try:
            while not self._stop_render.is_set():
                with self._avatar_lock:
                    avatar, self._pending_avatar = self._pending_avatar, None
                if avatar is not None:
                    self._apply_avatar(*avatar)
                self.playout.step(self._stop_render)
                if self._first_render_mono is None:
                    self._first_render_mono = time.monotonic()
        except LookaheadClosed:
            pass
        except Exception as e:  # noqa: BLE001 - the broadcast holds the last frame; systemd restarts us
            self.fatal = f"render loop crashed: {e!r}"
            self.log.exception("render_loop_crashed", error=repr(e))
            self.request_stop()

    def _apply_avatar(self, image: np.ndarray, prompt: str) -> None:
        self.reference, self.prompt = image, prompt
        self.renderers.set_avatar(image, prompt)
        self.playout.set_avatar(image, prompt)  # the idle bank follows at this same chunk boundary
        self.log.info("avatar_changed", prompt=prompt)

    def _broadcast_loop(self) -> None:
        try:
            self.broadcast.run()
            self.playout.settle()
        except Exception as e:  # noqa: BLE001
            self.fatal = f"broadcast loop crashed: {e!r}"
            self.log.exception("broadcast_loop_crashed", error=repr(e))
        finally:
            self._stopped.set()

    def _on_air(self) -> None:
        """The first frame went out (the still renderer's): only now does the engine start loading, so its imports
        and build (torch: seconds of the GIL on a GPU box) do not hold back the room's first frame."""
        self.state = "on_air"
        now = time.monotonic()
        first = self._first_render_mono
        # Where the start-up's seconds went (docs/broadcast.md, lifecycle): since the process began (interpreter,
        # imports, settings, then this); since the room began building, to its first chunk and its first frame out.
        self.log.info("on_air", outputs=self.outputs.names(), process_s=_process_age_s(),
                      first_chunk_s=None if first is None else round(first - self._started_mono, 3),
                      first_frame_s=round(now - self._started_mono, 3))
        self.renderers.start()

    def _housekeeping(self) -> None:
        """Once per storage.check_interval_s: the disk watermark, the spool's reserve, unsettled clips."""
        paused = False
        while not self._stopped.wait(self.s.storage.check_interval_s):
            try:
                low = self.disk.check()
                if low != paused:
                    paused = low
                    self.outputs.pause_recordings(self.disk.refusal() if low else None,
                                                  device=os.stat(self.spool.dir).st_dev)
                if not low and self.spool.reserve_released:
                    self.spool.ensure_reserve()
                self.playout.settle()
                self.streams.sweep()  # streams idle past streams.idle_timeout_s are closed as cut
            except Exception as e:  # noqa: BLE001
                self.log.error("housekeeping_failed", error=repr(e))

    # -- status --------------------------------------------------------------------------------------
    def vitals(self) -> Vitals:
        """What the health probes judge; lock-free reads only, so a stalled thread cannot stall its own probe."""
        now = time.monotonic()
        last = self.broadcast.last_frame_at
        return Vitals(state=self.state, uptime_s=now - self._started_mono,
                      since_last_frame_s=None if last is None else max(0.0, now - last),
                      renderer=self.s.renderer.kind,
                      fallback_s=self.renderers.fallback_on_air_s(self.playout.onair.renderer_since, now))

    def status(self) -> dict[str, Any]:
        enc = self.encoder.stats()
        pst = self.playout.pacer.stats()
        queue = self.spool.stats()
        # The spool counts the clip on air whole until it finishes; what already aired is no longer queued.
        played = self.playout.onair.played_s()
        queue["queued_seconds"] = round(max(0.0, queue.get("queued_seconds", 0.0) - played), 3)
        queue["on_air_played_s"] = round(played, 3)
        return {
            "state": self.state,
            "room": self.s.room or None,
            "uptime_s": round(time.time() - self.started_at, 1),
            "on_air": self.playout.on_air,
            "queue": queue,
            "streams": self.streams.status(),
            "latency": {"push_to_air": self.latency.status()},
            "storage": {**self.disk.status(), **self.playout.onair.storage_status(),
                        "spool_quarantined": str(self.spool.quarantined[0]) if self.spool.quarantined else None},
            "broadcast": {
                **pst,
                "av_skew_s": round(self.broadcast.av_skew_s, 4),
                "render_rtf": self.renderers.render_rtf,
                "media_time_s": round(enc["frames"] / self.s.video.fps, 3),
                "video_codec": enc["video_codec"],
                "send_max_s": round(self.outputs.send_max_s, 4),
                # a streamed clip's producer behind real time: pauses inside the clip that aired, not our underruns
                "producer_starved_seconds": round(self.playout.pacer.starved_samples / self.s.encoder.audio_rate, 3),
            },
            "renderer": self.renderers.status(self.playout.onair.renderer_since),
            "render_ahead": self.playout.render_ahead_status(),
            "plan": self.plan_status(),
            "outputs": self.outputs.status(),
            "overlays": self.compositor.status(),
            "rss_bytes": _rss_bytes(),
            "gpu": gpu_memory(),
            "metrics_port": self.metrics_port,
        }

    def health(self) -> dict[str, Any]:
        """The periodic `health` log line (logging.health_interval_s): is the room well, in one line."""
        pst = self.playout.pacer.stats()
        outs = self.outputs.status()
        down = [o["name"] for o in outs if o.get("state") != "up"]
        return {"state": self.state, "on_air": self.playout.on_air or "programme/idle",
                "renderer": self.renderers.current_name(), "buffered_s": self.playout.render_ahead.status()["buffered_s"],
                "underruns": pst.get("underrun_episodes", 0), "underrun_frames": pst.get("underrun_frames", 0),
                "outputs_up": f"{len(outs) - len(down)}/{len(outs)}", "outputs_down": down,
                "queue_clips": self.spool.stats().get("clips", 0)}

    # -- life cycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the room's sockets and port, then start its threads. A busy ipc path or port is the operator's to fix
        (EndpointBusy, a ConfigError: `run` exits 2 with one line), and nothing is left bound."""
        # Process-wide: the broadcast thread must get the interpreter back within a fraction of a frame (the pacer's
        # test, tests/playout/test_broadcast_share.py, shows what Python's 5 ms does with a busy engine thread).
        sys.setswitchinterval(self.s.renderer.gil_switch_interval_s)
        try:
            self.ingest.start()
            if self.s.metrics.enabled:
                self._start_http()
        except BaseException:
            self.ingest.stop()
            raise
        for name, fn in (("render", self._render_loop), ("broadcast", self._broadcast_loop),
                         ("housekeeping", self._housekeeping)):
            t = threading.Thread(target=_named(f"ftl-{name}", fn), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _start_http(self) -> None:
        m = self.s.metrics
        try:
            if self.console_token is not None:  # the console serves /metrics too, on the same port
                self.metrics_server, self.console = start_console(
                    self.s.expanded(self.s.console), m, self.ingest, self.events, self.air, self.console_token, self.status,
                    self.probes)
            else:
                self.metrics_server, _ = serve_metrics(m.host, m.port, self.status, max_connections=m.max_connections,
                                                       timeout_s=m.timeout_s, log=self.log, probes=self.probes)
        except OSError as e:
            why = "the port is in use (another room or program listens there)" if e.errno == errno.EADDRINUSE \
                else (e.strerror or repr(e))
            raise EndpointBusy(f"metrics.port = {m.port} on {m.host}: cannot listen: {why}; expected a free port for "
                               "each room, or metrics.port = 0 for any free one (logged at start)") from None
        self.metrics_port = self.metrics_server.server_port
        host = f"[{m.host.strip('[]')}]" if ":" in m.host.strip("[]") else m.host
        self.log.info("http_listening", url=f"http://{host}:{self.metrics_port}/",
                      serves="console and /metrics" if self.console is not None else "/metrics")
        if self.console is not None:
            self.log.info("console", url=console_url(m.host, self.metrics_port), token=self.console_token_source)

    def reload(self, new: Settings | None) -> dict[str, Any]:
        """SIGHUP: re-read what can change on air. Client keys (the folder, and the config's lists: keys no longer
        allowed are revoked, their connections closed), the log level, and the outputs the config file names (added,
        removed or changed by name; outputs added with output_add are left alone). Anything else in the file needs a
        restart. `new` None (the file cannot be read) re-reads the key folder only."""
        done: dict[str, Any] = {}
        ing = (new or self.s).ingest
        self.ingest.reload_keys(ing.client_keys, ing.trusted_client_keys)
        done["client_keys"] = "reloaded"
        if new is not None:
            configure_logging(new.logging.format, new.logging.level)
            done["log_level"] = new.logging.level
            old = {o.name: o for o in self.s.outputs}
            want = {o.name: o for o in new.outputs}
            removed = [n for n in old if n not in want or want[n] != old[n]]
            added = [n for n in want if n not in old or want[n] != old[n]]
            for name in removed:
                if name in self.outputs.names():
                    self.outputs.remove(name)
            for name in added:
                if name in self.outputs.names():  # a runtime output_add took the name: the config's waits
                    self.log.warning("reload_output_name_taken", output=name)
                    continue
                try:
                    self.outputs.add(self._expand_output(want[name]))
                except OutputRejected as e:
                    self.log.error("reload_output_refused", output=name, error=str(e))
            self.s = self.s.model_copy(update={"outputs": new.outputs, "logging": new.logging})
            done["outputs_removed"], done["outputs_added"] = removed, added
        self.log.info("reloaded", **done)
        self.events.publish("reloaded", **done)
        return done

    def request_stop(self) -> None:
        """SIGTERM: finish the chunk on air, flush and close outputs; the queue stays persisted."""
        if self.state == "stopping":
            return
        self.state = "stopping"
        sd_notify("STOPPING=1")
        self.events.publish("stopping")
        self._stop_render.set()
        self.playout.stop()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def close(self) -> None:
        self.request_stop()
        self._stopped.wait(30 if self._threads else 0)  # a start that failed ran no broadcast to wait for
        self.playout.close()
        for t in self._threads:
            t.join(timeout=5)
        self.outputs.close(timeout=max(1.0, 2 * self.s.output_policy.rw_timeout_s))
        self.ingest.stop()
        if self.console is not None:
            self.console.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        self.renderers.close()
        self.compositor.close()
        self.playout.close_store()
        self.encoder.close()
        self.spool.close()
        self.log.info("stopped")


def _process_age_s() -> float | None:
    """Seconds since this process was started (Linux: /proc), for the start-up's split; None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def _named(os_name: str, fn: Any) -> Any:
    """fn, run under `os_name` as the kernel's name of its thread (top -H, /proc/PID/task/TID/comm)."""
    def run() -> None:
        name_os_thread(os_name)
        fn()
    return run


def run_daemon(settings: Settings, duration_s: float | None = None,
               reload: Callable[[], Settings] | None = None) -> int:
    """The `flashtalk-live run` entry point: start, serve until SIGTERM/SIGINT (or duration), stop cleanly.
    SIGHUP reloads (`Daemon.reload`; `reload()` reads the configuration again) and never stops the room.

    With the FlashTalk renderer on several GPUs (model.gpus), this process becomes rank 0 and starts the other
    ranks itself (or joins a torchrun job); a dead rank stops the daemon with exit code 75 so systemd restarts it.
    The state directory is locked first (StateDirBusy when another daemon has it), before any rank starts.
    """
    with StateLock(settings.path(settings.state_dir)):
        return _run_locked(settings, duration_s, reload)


def _run_locked(settings: Settings, duration_s: float | None, reload: Callable[[], Settings] | None = None) -> int:
    parallel = None
    exit_code = 0
    stop = threading.Event()
    raise_fd_limit()
    parallel = renderer_kind(settings.renderer.kind).launch(settings)
    daemon = Daemon(settings, parallel=parallel)
    if parallel is not None:
        def on_rank_failure(reason: str) -> None:
            nonlocal exit_code
            daemon.log.error("rank_failed", reason=reason)
            exit_code = 75
            stop.set()

        parallel.on_failure = on_rank_failure

    wake = threading.Event()
    hup = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        daemon.log.info("signal", signal=signal.Signals(signum).name)
        stop.set()
        wake.set()

    def on_hup(_signum: int, _frame: Any) -> None:  # the work is the main loop's, not the handler's
        hup.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        daemon.start()
    except BaseException:
        daemon.close()  # what the constructor opened (spool, outputs, renderers); the error is the exit's
        if parallel is not None:
            parallel.close()
        raise
    deadline = None if duration_s is None else time.monotonic() + duration_s
    every = settings.logging.health_interval_s
    next_health = time.monotonic() + every
    try:
        while not stop.is_set() and not daemon.wait(0):
            if deadline is not None and time.monotonic() >= deadline:
                break
            wake.wait(1.0 if not every else max(0.05, min(1.0, next_health - time.monotonic())))
            wake.clear()
            if hup.is_set():
                hup.clear()
                _reload(daemon, reload)
            if every and time.monotonic() >= next_health:
                next_health = time.monotonic() + every
                try:
                    daemon.log.info("health", **daemon.health())
                except Exception as e:  # noqa: BLE001 - a status read must never stop the room
                    daemon.log.warning("health_failed", error=repr(e))
            q = daemon.spool.stats()
            sd_notify(f"STATUS={daemon.state}; on air: {daemon.playout.on_air or 'programme/idle'}; "
                      f"queue {q.get('clips', 0)} clips")
    finally:
        daemon.close()
        if parallel is not None:
            parallel.close()
    if exit_code == 0 and daemon.fatal is not None:
        daemon.log.error("exiting_on_fatal_error", reason=daemon.fatal, exit_code=EXIT_FATAL)
        exit_code = EXIT_FATAL
    return exit_code


def _reload(daemon: Daemon, reload: Callable[[], Settings] | None) -> None:
    """SIGHUP: read the configuration again and apply what can change on air; a bad file is one log line."""
    daemon.log.info("signal", signal="SIGHUP", action="reload")
    new = None
    if reload is not None:
        try:
            new = reload()
        except Exception as e:  # noqa: BLE001 - a config mistake on reload must not stop the room
            daemon.log.error("reload_config_unreadable", error=str(e).splitlines()[0][:300],
                             note="client keys re-read from the folder only; the rest unchanged")
    try:
        daemon.reload(new)
    except Exception as e:  # noqa: BLE001
        daemon.log.exception("reload_failed", error=repr(e)[:300])


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one (systemd's default soft 1024 is too few) and log both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if new > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            new = soft
    get_logger("daemon").info("fd_limit", soft_was=soft, soft=new, hard=hard, reserved=fdreserve.hold(RESERVED_FDS))
    return new, hard
