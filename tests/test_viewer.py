"""The viser viewer: camera conversion, a real browser showing server-side renders that follow the
camera, a first view the training cameras leave clear, loopback-only binding, port fallback, pause,
and render errors that never stop training."""
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import viser.transforms as vtf

import data
from recon.cli import main
from recon.methods.splat import Splat
from recon.runs import open_run, preset_config
from recon.trainer import Trainer
from viewer import Viewer
from viewer.render import Camera, camera_matrices, image_size, to_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPO = Path(__file__).resolve().parents[1]


def tiny_splat(scene_dir: Path, max_steps: int) -> Splat:
    config = replace(preset_config(Splat, "fast"), max_steps=max_steps, eval_every=max_steps, checkpoint_every=max_steps, log_every=10)
    return Splat(config, data.load(scene_dir))


@pytest.fixture(scope="module")
def trained_run(tiny_blender, tmp_path_factory):
    """A 3DGS run of 40 steps on the tiny scene."""
    run = tmp_path_factory.mktemp("viewer") / "run"
    Trainer(tiny_splat(tiny_blender, 40), run, {"method": "splat", "preset": "fast", "data": str(tiny_blender), "data_options": {}}).run(quiet=True)
    return run


@pytest.fixture
def saved_viewer(trained_run):
    method, info = open_run(trained_run)
    viewer = Viewer(method, port=free_port(), training=False, step=info["step"])
    yield viewer
    viewer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def test_a_training_camera_round_trips_through_the_viser_camera(tiny_blender):
    scene = data.load(tiny_blender)
    K, c2w = scene.K[0], scene.c2w[0]
    fov = 2 * math.atan(0.5 * scene.height / float(K[1, 1]))
    camera = Camera(tuple(vtf.SO3.from_matrix(c2w[:3, :3].numpy()).wxyz), tuple(c2w[:3, 3].tolist()), fov, scene.width / scene.height)
    assert image_size(camera.aspect, max(scene.width, scene.height)) == (scene.width, scene.height)
    K2, c2w2 = camera_matrices(camera, scene.width, scene.height)
    torch.testing.assert_close(K2, K.float(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(c2w2, c2w.float(), atol=1e-5, rtol=1e-5)
    assert image_size(0.5, 100) == (50, 100) and image_size(2.0, 100) == (100, 50)


def test_render_modes_make_images():
    depth = torch.linspace(1, 3, 12).view(3, 4)
    outputs = {"rgb": torch.rand(3, 4, 3), "depth": depth, "opacity": torch.ones(3, 4)}
    for mode in ("RGB", "Depth", "Opacity"):
        image = to_image(outputs, mode)
        assert image.shape == (3, 4, 3) and image.dtype == np.uint8
    colored = to_image(outputs, "Depth").astype(int)
    assert colored[0, 0, 0] > colored[0, 0, 2] and colored[-1, -1, 2] > colored[-1, -1, 0]  # near red, far blue
    assert (to_image({**outputs, "opacity": torch.zeros(3, 4)}, "Depth") == 0).all()  # nothing hit: black
    with pytest.raises(ValueError, match="render mode"):
        to_image(outputs, "Normals")


@pytest.fixture
def browser():
    """Headless Debian chromium driven by playwright, or a skip naming what is missing (a failure in
    CI, which installs both)."""
    missing = None if CHROMIUM else "Debian's chromium package (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package (pip install playwright)"
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"needs {missing}; .ci/run installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        yield browser
        browser.close()


def connected_client(viewer):
    """The one browser tab connected to `viewer`, once it has connected (at most 30 s)."""
    deadline = time.monotonic() + 30
    while not viewer.server.get_clients() and time.monotonic() < deadline:
        time.sleep(0.2)
    (client,) = viewer.server.get_clients().values()
    return client


def server_render(viewer, client, height: int, width: int) -> np.ndarray:
    """The server's render for the tab's current camera, stretched to the page: [height, width] grey."""
    image = viewer.render(Camera.of(client.camera), viewer.resolution.value, viewer.render_mode.value)
    image = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(height, width), mode="bilinear")
    return image[0].mean(0).numpy()


def grey_screenshot(page) -> np.ndarray:
    return iio.imread(page.screenshot(), extension=".png")[..., :3].mean(-1)


def settled_screenshot(page, view) -> np.ndarray:
    """A grey screenshot once the tab's full-resolution frame has been sent and the page stopped changing."""
    deadline, previous = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if not (view.full and view.rendered_camera_time == view.camera_time):
            previous = None  # no frame yet, or a quick low-resolution one
            continue
        shot = grey_screenshot(page)
        if previous is not None and np.array_equal(shot, previous):
            return shot
        previous = shot
    raise AssertionError("the page never settled on a full-resolution frame")


def test_browser_shows_the_render_and_follows_the_camera(browser, saved_viewer):
    viewer = saved_viewer
    viewer.show_cameras.value = False  # only the server-side render on the canvas
    region = (slice(150, 540), slice(0, 460))  # below the notifications, left of the control panel

    def wait_for_match(page, client, differs_from=None) -> np.ndarray:
        """Screenshots until the page shows the expected render (correlation > 0.9); returns the region."""
        deadline, corr = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            shot = grey_screenshot(page)[region]
            corr = np.corrcoef(shot.ravel(), server_render(viewer, client, 600, 800)[region].ravel())[0, 1]
            if corr > 0.9 and (differs_from is None or np.abs(shot - differs_from).mean() > 8):
                return shot
            time.sleep(0.5)
        raise AssertionError(f"the page never showed the expected render (last correlation {corr:.3f})")

    page = browser.new_page(viewport={"width": 800, "height": 600})
    page.goto(viewer.url)
    client = connected_client(viewer)
    first = wait_for_match(page, client)
    assert first.std() > 10  # rendered objects, not an empty canvas
    page.mouse.move(150, 400)  # orbit by dragging, as a person would
    page.mouse.down()
    page.mouse.move(300, 430, steps=8)
    page.mouse.up()
    wait_for_match(page, client, differs_from=first)
    viewer.render_mode.value = "Depth"
    wait_for_match(page, client, differs_from=first)


def test_the_first_view_shows_the_scene_unobstructed(browser, saved_viewer):
    """With the training cameras shown, the middle of the page as it first settles, before any
    interaction, is the server's render of the browser's camera: the scene, no frustum in front."""
    viewer, scene = saved_viewer, saved_viewer.method.scene
    middle = (slice(200, 600), slice(440, 840))  # 400×400 px at the centre, clear of notifications and panel
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(viewer.url)
    client = connected_client(viewer)
    shot = settled_screenshot(page, viewer._views[client.client_id])
    assert client.camera.fov == pytest.approx(2 * math.atan(0.5 * scene.height / float(scene.K[0, 1, 1])), rel=1e-3)
    expected = server_render(viewer, client, 800, 1280)[middle]
    assert expected.std() > 10  # the scene is in the middle, not background
    difference = np.abs(shot[middle] - expected)  # JPEG and scaling: under 16 grey levels everywhere
    assert difference.mean() < 3, f"the middle of the first view differs from the render by {difference.mean():.1f} grey levels on average"
    covered = (difference > 32).mean()  # thin frustum lines across the scene would cover ~1%
    assert covered < 0.002, f"{covered:.1%} of the middle of the first view is covered (frustums in front of the scene)"


def test_default_bind_is_loopback_only(saved_viewer):
    assert saved_viewer.server.get_host() == "127.0.0.1" and saved_viewer.url.startswith("http://127.0.0.1:")
    assert reachable("127.0.0.1", saved_viewer.port)
    assert not reachable("127.0.0.2", saved_viewer.port)  # a socket on all interfaces would accept this


def test_a_taken_port_moves_to_a_free_one(trained_run):
    method, _ = open_run(trained_run)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        viewer = Viewer(method, port=port, training=False)
        try:
            assert viewer.port != port
            assert urllib.request.urlopen(viewer.url, timeout=10).status == 200
        finally:
            viewer.close()


def test_an_address_that_is_not_ours_is_a_one_line_error(trained_run):
    method, _ = open_run(trained_run)
    with pytest.raises(ValueError, match="viewer host '203.0.113.7'"):
        Viewer(method, host="203.0.113.7", port=free_port())


def test_pause_holds_training_until_resumed(tiny_blender, tmp_path):
    method = tiny_splat(tiny_blender, 3)
    viewer = Viewer(method, port=free_port())
    try:
        viewer._toggle_pause()
        trainer = threading.Thread(target=Trainer(method, tmp_path / "run", {}).run, kwargs={"quiet": True, "viewer": viewer})
        trainer.start()
        time.sleep(1.0)
        assert viewer._step == 0 and "paused" in viewer.stats.content
        viewer._toggle_pause()
        trainer.join(timeout=60)
        assert not trainer.is_alive() and viewer._step == 3
    finally:
        viewer.close()


def test_a_render_error_is_logged_and_training_goes_on(tiny_blender, tmp_path, caplog):
    method = tiny_splat(tiny_blender, 20)
    viewer = Viewer(method, port=free_port())
    render_view = method.render_view
    trainer_thread = threading.current_thread()

    def broken_for_the_viewer(*args):  # the trainer's own validation renders still work
        if threading.current_thread() is not trainer_thread:
            raise RuntimeError("broken renderer")
        return render_view(*args)

    method.render_view = broken_for_the_viewer
    camera = Camera((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, -4.0), 0.8, 1.0)
    results, stop = [], threading.Event()

    def browse() -> None:  # a render request per few milliseconds, as a moving camera would
        while not stop.is_set():
            results.append(viewer.render(camera, 32))
            time.sleep(0.005)

    browser = threading.Thread(target=browse)
    try:
        with caplog.at_level(logging.ERROR, logger="viewer.server"):
            browser.start()
            result = Trainer(method, tmp_path / "run", {}).run(quiet=True, viewer=viewer)
            stop.set()
            browser.join()
        assert "val_psnr" in result and viewer._step == 20
        assert results and all(r is None for r in results)
        assert sum("broken renderer" in r.message for r in caplog.records) == 1  # logged once, not per frame
        method.render_view = render_view
        assert viewer.render(camera, 32).shape == (32, 32, 3)  # and the viewer still works
    finally:
        viewer.close()


def test_view_command_serves_a_run_until_interrupted(trained_run):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "recon.cli", "view", str(trained_run), "--port", str(port)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("viewer: "):
                break
        assert f"viewer: http://127.0.0.1:{port} (splat step 40" in lines[-1], "".join(lines)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=10).status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


def test_view_command_names_a_bad_run_dir(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nowhere" in err and "not a run directory" in err
