"""A viser server that renders a method from each browser's camera, during training or for a saved run.

Threads: viser's own (web server, callbacks), one render thread of ours, and the caller's (the
training loop). Training and rendering share the model through `Viewer.lock`: the trainer holds it
for each `train_step` (the only thing that changes the model; see `training_step()`), the render
thread for one render, and a waiting render goes before the next step. A browser camera that moves
gets quick low-resolution frames; once it has been still for `SETTLE_S` the view is rendered again
at full resolution. While training, a still view is refreshed as the model changes, but rendering
takes at most `render_share` of the wall time, so an idle viewer costs training little. A failing
render is logged, never raised.
"""
from __future__ import annotations

import logging
import math
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import viser
import viser.transforms as vtf

from recon.methods.base import Method
from viewer.render import MODES, Camera, camera_matrices, image_size, to_image

log = logging.getLogger(__name__)

SETTLE_S = 0.2  # a camera still for this long gets a full-resolution frame
TICK_S = 0.05  # the render thread looks for work at least this often
STATS_EVERY_S = 1.0  # refresh of the statistics panel
REFRESH_MIN_S = 5.0  # while training, a still view is re-rendered at most this often
POINTS_EVERY_S = 10.0  # refresh of the Gaussian centres while training
MAX_POINTS = 100_000  # point cloud size cap (every k-th point beyond it)
SH_C0 = 0.28209479177387814  # Gaussian colour = SH_C0 · sh0 + 0.5
FRUSTUM_SIZE = 0.2  # training-camera frustum size (viser's scale) per median distance between neighbouring cameras
FRUSTUM_LINE_PX = 1.5  # frustum line width in screen pixels
FRUSTUM_GREY = (150, 150, 150)


@dataclass
class _ClientView:
    """What the render thread knows about one browser tab."""

    client: viser.ClientHandle
    camera_time: float = field(default_factory=time.monotonic)  # last camera change
    rendered_camera_time: float = -1.0  # camera_time of the shown frame
    full: bool = False  # the shown frame is full resolution
    rendered_step: int = -1  # model step of the shown frame
    rendered_settings: int = -1  # settings version of the shown frame
    render_end: float = 0.0  # monotonic time the last render finished
    render_s: float = 0.0  # how long it took


class Viewer:
    """Serve `method` to browsers. `training`: live statistics and a pause button for a trainer
    that calls `training_step()` and `update()`; otherwise a saved run at `step`."""

    def __init__(self, method: Method, *, host: str = "127.0.0.1", port: int = 8080, training: bool = True,
                 step: int = 0, render_share: float = 0.05) -> None:
        _check_bindable(host, port)
        self.method = method
        self.training = training
        self.render_share = render_share
        self.lock = threading.Lock()  # the model: one training step or one render at a time
        self._lock_wanted = threading.Event()  # a render waits for the lock
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._views: dict[int, _ClientView] = {}
        self._views_lock = threading.Lock()
        self._step, self._stats, self._done = step, {}, not training
        self._settings_version = 0
        self._last_error = ""

        self.server = viser.ViserServer(host=host, port=port, label=f"recon · {method.name}", verbose=False)
        self.host, self.port = host, self.server.get_port()
        self._build_gui()
        self._add_scene_context()
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)
        self._thread = threading.Thread(target=self._render_loop, name="viewer-render", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- the trainer's side -------------------------------------------------------------------
    @contextmanager
    def training_step(self):
        """Wrap one training step: wait while paused, let a waiting render go first, hold the lock."""
        self._unpaused.wait()
        while self._lock_wanted.is_set():
            time.sleep(0.001)
        with self.lock:
            yield

    def update(self, step: int, stats: dict[str, float]) -> None:
        """Called after each step with the trainer's statistics (loss, psnr, rays_per_s or gaussians)."""
        self._step, self._stats = step, stats

    def complete(self) -> None:
        """Training has ended: the viewer keeps serving the final model."""
        self._done = True
        self._unpaused.set()
        self.pause_button.visible = False
        self._wake.set()

    def serve_forever(self) -> None:
        """Block until Ctrl-C, then close."""
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._unpaused.set()
        self._thread.join(timeout=10)
        self.server.stop()

    # ---- rendering ----------------------------------------------------------------------------
    @contextmanager
    def _model(self):
        """The model lock, taken ahead of the trainer's next step."""
        self._lock_wanted.set()
        with self.lock:
            self._lock_wanted.clear()
            yield

    def render(self, camera: Camera, long_side: int, mode: str = "RGB") -> np.ndarray | None:
        """uint8 [H, W, 3] image of the model seen from `camera`; None (and a log line) if rendering fails."""
        try:
            width, height = image_size(camera.aspect, long_side)
            K, c2w = camera_matrices(camera, width, height)
            with self._model():
                outputs = self.method.render_view(K, c2w, width, height)
                outputs = {key: outputs[key].detach().float().cpu() for key in ("rgb", "depth", "opacity")}
            return to_image(outputs, mode)
        except Exception as error:  # a viewer problem must never stop training
            message = f"{type(error).__name__}: {error}"
            if message != self._last_error:  # log each distinct error once
                log.error("viewer: render failed: %s", message, exc_info=error)
            self._last_error = message
            return None

    def _render_loop(self) -> None:
        last_stats = last_points = 0.0
        while not self._stop.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            with self._views_lock:
                views = list(self._views.values())
            for view in views:
                try:
                    self._serve(view)
                except Exception as error:  # e.g. a tab closed while we sent to it
                    log.warning("viewer: dropped a frame: %s", error)
            now = time.monotonic()
            if self.training and now - last_stats >= STATS_EVERY_S:
                last_stats = now
                self.stats.content = self._stats_text()
                self._update_debug_image()
            if self.training and not self._done and views and self.show_points.value and now - last_points >= POINTS_EVERY_S:
                last_points = now
                self._update_points()

    def _serve(self, view: _ClientView) -> None:
        """Render the next frame this tab needs, if any, and send it."""
        now = time.monotonic()
        camera_time, step, settings = view.camera_time, self._step, self._settings_version
        still = now - camera_time >= SETTLE_S
        if camera_time != view.rendered_camera_time:
            full = still  # a moving camera gets quick frames
        elif not view.full:
            if not still:
                return
            full = True
        elif settings != view.rendered_settings:
            full = True
        elif step != view.rendered_step and self._refresh_due(view, now):
            full = True
        else:
            return
        resolution = self.resolution.value if full else self.moving_resolution.value
        image = self.render(Camera.of(view.client.camera), resolution, self.render_mode.value)
        if image is not None:
            view.client.scene.set_background_image(image, format="jpeg", jpeg_quality=90 if full else 75)
        view.render_end = time.monotonic()
        view.render_s = view.render_end - now
        view.rendered_camera_time, view.full, view.rendered_step, view.rendered_settings = camera_time, full, step, settings

    def _refresh_due(self, view: _ClientView, now: float) -> bool:
        """While training, re-render a still view only often enough to use `render_share` of the time."""
        return now - view.render_end >= max(REFRESH_MIN_S, view.render_s * (1 - self.render_share) / self.render_share)

    def _on_connect(self, client: viser.ClientHandle) -> None:
        view = _ClientView(client)

        def moved(_camera) -> None:
            view.camera_time = time.monotonic()
            self._wake.set()

        client.camera.on_update(moved)
        with self._views_lock:
            self._views[client.client_id] = view
        self._wake.set()

    def _on_disconnect(self, client: viser.ClientHandle) -> None:
        with self._views_lock:
            self._views.pop(client.client_id, None)

    # ---- GUI ----------------------------------------------------------------------------------
    def _build_gui(self) -> None:
        gui, scene = self.server.gui, self.method.scene
        gui.configure_theme(control_width="medium", show_share_button=False)
        with gui.add_folder("Training" if self.training else "Run"):
            self.stats = gui.add_markdown(self._stats_text())
            self.pause_button = gui.add_button("Pause training", icon=viser.Icon.PLAYER_PAUSE, visible=self.training)
            self.pause_button.on_click(lambda _: self._toggle_pause())
            self.debug_image = gui.add_image(np.zeros((8, 8, 3), np.uint8), label="debug", format="png", visible=False)
            self._shown_debug = None
        with gui.add_folder("Render"):
            self.render_mode = gui.add_dropdown("Mode", MODES, initial_value="RGB")
            full = int(np.clip(max(scene.width, scene.height), 256, 1024)) // 32 * 32
            self.resolution = gui.add_slider("Resolution", 64, 2048, 32, full, hint="longer side in pixels once the camera stops")
            self.moving_resolution = gui.add_slider("Moving resolution", 32, 1024, 16, max(32, full // 4), hint="longer side in pixels while the camera moves")
        for control in (self.render_mode, self.resolution, self.moving_resolution):
            control.on_update(lambda _: self._settings_changed())
        with gui.add_folder("Scene"):
            self.show_cameras = gui.add_checkbox("Training cameras", True)
            self.show_points = gui.add_checkbox("Point cloud", False, hint="Gaussian centres, or the scene's points")
        self.show_cameras.on_update(lambda _: self._show_cameras())
        self.show_points.on_update(lambda _: self._update_points())

    def _update_debug_image(self) -> None:
        """Show the method's latest debug image (text-to-3D: render | noisy input | x̂₀ per view)."""
        image = self.method.debug_image
        if self.training and image is not None and image is not self._shown_debug:
            self._shown_debug = image
            self.debug_image.image = to_image({"rgb": image}, "RGB")
            self.debug_image.visible = True

    def _settings_changed(self) -> None:
        self._settings_version += 1
        self._wake.set()

    def _toggle_pause(self) -> None:
        if self._unpaused.is_set():
            self._unpaused.clear()
            self.pause_button.label, self.pause_button.icon = "Resume training", viser.Icon.PLAYER_PLAY
        else:
            self._unpaused.set()
            self.pause_button.label, self.pause_button.icon = "Pause training", viser.Icon.PLAYER_PAUSE
        self.stats.content = self._stats_text()

    def _stats_text(self) -> str:
        method, s = self.method, self._stats
        lines = [f"**{method.name}** on `{method.scene.name}`"]
        if not self.training:
            lines.append(f"saved run, step {self._step:,}")
        else:
            state = "done" if self._done else "paused" if not self._unpaused.is_set() else "training"
            lines.append(f"step {self._step:,} / {method.config.max_steps:,} ({state})")
            if s:
                lines.append(method.progress_text(s))
                lines.append(f"{s['rays_per_s']:,.0f} rays/s" if "rays_per_s" in s else f"{s.get('steps_per_s', 0):.1f} steps/s")
        if "means" in getattr(method, "params", {}):
            lines.append(f"{method.params['means'].shape[0]:,} Gaussians")
        return "  \n".join(lines)

    # ---- scene context ------------------------------------------------------------------------
    def _add_scene_context(self) -> None:
        """Training cameras as small grey wireframes, the point cloud, the up direction and the first
        view: from the first training camera, at the scene centre. (Seen from outside a ring of cameras,
        the ring's near side lies over the scene at any distance; seen from the ring, nothing does.)"""
        scene = self.method.scene
        train = scene.split("train")
        K, c2w = scene.K[train], scene.c2w[train]  # [T, 3, 3], [T, 4, 4]
        positions = c2w[:, :3, 3].numpy()  # [T, 3]
        centre = scene.bounds.mean(0).numpy()
        self._scale = float(np.median(np.linalg.norm(positions - centre, axis=-1))) or 1.0
        up = -c2w[:, :3, 1].mean(0).numpy()  # OpenCV y points down
        self.server.scene.set_up_direction(up / max(np.linalg.norm(up), 1e-8))
        fov = 2 * math.atan(0.5 * scene.height / float(K[0, 1, 1]))
        self.server.initial_camera.fov = fov
        self.server.initial_camera.position = positions[0]
        self.server.initial_camera.look_at = centre
        self.server.initial_camera.up = up
        # No thumbnails: opaque images drawn over the render, and the first camera's would fill the first view
        frustum_scale = FRUSTUM_SIZE * (_neighbour_spacing(c2w[:, :3, 3]) or self._scale)
        self._frustums, self._points = [], None
        for i, pose in enumerate(c2w.numpy()):
            frustum = self.server.scene.add_camera_frustum(
                f"/cameras/{i}", fov=fov, aspect=scene.width / scene.height, scale=frustum_scale, color=FRUSTUM_GREY,
                thickness=FRUSTUM_LINE_PX, thickness_units="screen", wxyz=vtf.SO3.from_matrix(pose[:3, :3]).wxyz, position=pose[:3, 3])
            frustum.on_click(lambda event, pose=pose: self._go_to(event.client, pose))
            self._frustums.append(frustum)
        self._update_points()

    def _update_points(self) -> None:
        """Show the Gaussian centres (in their base colour), or else the scene's points; or hide them."""
        if not self.show_points.value:
            if self._points is not None:
                self._points.visible = False
            return
        params = getattr(self.method, "params", {})
        if "means" in params:
            with self._model():
                means = params["means"].detach().cpu()  # [N, 3]
                colors = (SH_C0 * params["sh0"].detach()[:, 0] + 0.5).clamp(0, 1).cpu() if "sh0" in params else torch.full_like(means, 0.5)
        elif self.method.scene.points is not None:
            means, colors = self.method.scene.points, self.method.scene.point_colors  # [P, 3], [P, 3]
        else:
            return
        every = max(1, math.ceil(means.shape[0] / MAX_POINTS))
        self._points = self.server.scene.add_point_cloud(
            "/points", means[::every].numpy(), (colors[::every].numpy() * 255).astype(np.uint8), point_size=0.005 * self._scale)

    def add_boxes(self, name: str, boxes: np.ndarray, labels: list[str], color: tuple[int, int, int], scores: np.ndarray | None = None) -> None:
        """Axis-aligned boxes [B, 6] (min, max) as wireframes, each with its label (and score), under a
        checkbox `name` in the "Boxes" folder; scored boxes below the "Min score" slider are hidden."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 6)
        assert len(labels) == len(boxes) and (scores is None or len(scores) == len(boxes))
        if not hasattr(self, "_box_sets"):
            self._box_sets: dict[str, tuple] = {}
            with self.server.gui.add_folder("Boxes"):
                self.min_score = self.server.gui.add_slider("Min score", 0.0, 1.0, 0.01, 0.3, hint="hide predictions scored below")
            self.min_score.on_update(lambda _: self._draw_boxes())
        with self.server.gui.add_folder("Boxes"):
            toggle = self.server.gui.add_checkbox(name, True)
        toggle.on_update(lambda _: self._draw_boxes())
        self._box_sets[name] = (boxes, labels, color, scores, toggle, [])
        self._draw_boxes()

    def _draw_boxes(self) -> None:
        for name, (boxes, labels, color, scores, toggle, handles) in self._box_sets.items():
            for handle in handles:
                handle.remove()
            handles.clear()
            shown = np.ones(len(boxes), bool) if scores is None else np.asarray(scores) >= self.min_score.value
            if not toggle.value or not shown.any():
                continue
            segments = np.concatenate([_box_edges(box) for box in boxes[shown]])  # [12·B, 2, 3]
            handles.append(self.server.scene.add_line_segments(f"/boxes/{name}", segments, np.array(color, np.uint8), thickness=2.0, thickness_units="screen"))
            for k in np.nonzero(shown)[0]:
                text = labels[k] if scores is None else f"{labels[k]} {scores[k]:.2f}"
                handles.append(self.server.scene.add_label(f"/box_labels/{name}/{k}", text, position=boxes[k, 3:]))  # not under the wireframes' node

    def _show_cameras(self) -> None:
        for frustum in self._frustums:
            frustum.visible = self.show_cameras.value

    @staticmethod
    def _go_to(client: viser.ClientHandle, c2w: np.ndarray) -> None:
        """Move a browser's camera to a training view."""
        client.camera.wxyz = vtf.SO3.from_matrix(c2w[:3, :3]).wxyz
        client.camera.position = c2w[:3, 3]


def _box_edges(box: np.ndarray) -> np.ndarray:
    """The 12 edges [12, 2, 3] of an axis-aligned box (min, max)."""
    corners = np.array([[box[3 * i], box[3 * j + 1], box[3 * k + 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])  # index 4i + 2j + k
    pairs = [(a, a | bit) for a in range(8) for bit in (1, 2, 4) if not a & bit]
    return corners[np.array(pairs)]


def _neighbour_spacing(positions: torch.Tensor) -> float:
    """Median distance from each of the camera `positions` [T, 3] to its nearest neighbour; 0 for one camera."""
    if len(positions) < 2:
        return 0.0
    distances = torch.cdist(positions, positions).fill_diagonal_(math.inf)  # [T, T]
    return float(distances.min(1).values.median())


def _check_bindable(host: str, port: int) -> None:
    """A one-line error for an address this machine cannot serve on (viser would wait forever)."""
    if not 1 <= port <= 65535:
        raise ValueError(f"viewer port {port}: expected 1-65535")
    try:
        family = socket.getaddrinfo(host, None)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except OSError as error:
        raise ValueError(f"viewer host {host!r}: cannot listen there ({error.strerror or error})") from None
