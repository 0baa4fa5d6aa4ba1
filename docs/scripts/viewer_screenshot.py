"""Screenshot of the nerfstudio viewer showing a trained ovs3d run's label map and legend.

Produces docs/images/viewer-labels.png:

    python docs/scripts/viewer_screenshot.py --load-config RUN/config.yml --output docs/images/viewer-labels.png

What it does:

1. starts ``ns-viewer --load-config RUN/config.yml --viewer.websocket-port PORT`` in a child
   process (``serve`` below: the same ``ns-viewer`` entry point, plus one hook that puts each
   new browser client on training camera ``--view``, exactly what clicking that camera's
   frustum in the viewer does, and gives it that camera's field of view);
2. opens http://localhost:PORT in headless Chromium (Playwright, driving the system's
   /usr/bin/chromium; no Playwright browser download), window tall enough for the control
   panel with the "Custom Elements" folder (ovs3d panel and legend) open;
3. waits until the rendered frame stops changing, saves the screenshot, stops the viewer.

Needs: ``pip install playwright`` and a Chromium binary (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-gl=swiftshader",
    "--enable-unsafe-swiftshader",
]


def serve(load_config: str, port: int, view: int) -> None:
    """``ns-viewer`` with each new client placed on training camera ``view``."""
    import numpy as np
    from nerfstudio.scripts.viewer import run_viewer
    from nerfstudio.viewer.viewer import Viewer

    original = Viewer.handle_new_client

    def handle_new_client(self, client) -> None:
        original(self, client)

        def place() -> None:
            # init_scene sets train_state after drawing every camera; do not block viser's thread.
            while getattr(self, "train_state", None) is None:
                time.sleep(0.1)
            handle = self.camera_handles[view]
            camera = self.pipeline.datamanager.train_dataset.cameras[view]
            with client.atomic():  # what the frustum's on-click callback does, plus the camera's FOV
                client.camera.position = handle.position
                client.camera.wxyz = handle.wxyz
                client.camera.fov = float(2 * np.arctan(float(camera.cy) / float(camera.fy)))

        threading.Thread(target=place, daemon=True).start()

    Viewer.handle_new_client = handle_new_client
    sys.argv = ["ns-viewer", "--load-config", load_config, "--viewer.websocket-port", str(port)]
    run_viewer.entrypoint()


def wait_for_port(port: int, timeout: float, server: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the viewer exited with status {server.returncode}")
        try:
            with socket.create_connection(("localhost", port), timeout=1):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"no viewer on port {port} after {timeout:.0f} s")


def shoot(args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    log = open(args.viewer_log, "w")
    server = subprocess.Popen(
        [sys.executable, __file__, "serve", "--load-config", args.load_config, "--port", str(args.port),
         "--view", str(args.view)],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
    )  # fmt: skip
    try:
        wait_for_port(args.port, args.startup_timeout, server)
        with sync_playwright() as playwright:
            # A fresh profile each time (Playwright passes it as --user-data-dir).
            browser = playwright.chromium.launch_persistent_context(
                args.user_data_dir,
                executable_path=args.chromium,
                args=CHROMIUM_ARGS,
                viewport={"width": args.width, "height": args.height},
            )
            page = browser.new_page()
            page.goto(f"http://localhost:{args.port}", wait_until="domcontentloaded")
            try:
                _wait_and_render(page, args)
            except Exception:
                page.screenshot(path=f"{args.output}.debug.png")
                raise
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            # Below nerfstudio's header bar (its logo and links are remote and do not load offline).
            top = _scene_canvas(page).bounding_box()["y"]
            page.screenshot(path=args.output, clip={"x": 0, "y": top, "width": args.width, "height": args.height - top})
            browser.close()
        print(f"wrote {args.output}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _row_input(page, label: str):
    """The input on the same GUI row as ``label`` (viser's text inputs are not tied to their labels)."""
    return page.locator(
        f'xpath=//label[normalize-space()="{label}"]/ancestor::div[contains(@class,"mantine-Flex-root")][1]//input'
    ).first


def _scene_canvas(page):
    """The 3D view's canvas: of the page's large canvases, the narrowest (the other spans under the panel)."""
    canvases = page.locator("canvas")
    boxes = [(canvases.nth(i).bounding_box(), i) for i in range(canvases.count())]
    large = [(box["width"], i) for box, i in boxes if box is not None and box["height"] > 200]
    return canvases.nth(min(large)[1])


def _set_text(page, label: str, value: str) -> None:
    field = _row_input(page, label)
    field.fill(value)
    field.press("Enter")


def _wait_and_render(page, args: argparse.Namespace) -> None:
    """Waits for the panel and legend, hides the training cameras, waits for the final frame."""
    page.get_by_text("Custom Elements").first.wait_for(timeout=args.startup_timeout * 1000)
    page.get_by_text("Labels", exact=True).first.wait_for(timeout=60_000)  # the legend's heading
    # Standing on a training camera, its frustum's image plane would hide the render.
    page.get_by_role("button", name="Hide Train Cams").click()
    if args.labels is not None:
        _set_text(page, "Labels (';' separated)", args.labels)
    if args.query is not None:
        _set_text(page, "Free query", args.query)
    if args.output_type is not None:
        _row_input(page, "Output type").click()
        page.get_by_role("option", name=args.output_type, exact=True).click()
    if args.click is not None:
        box = _scene_canvas(page).bounding_box()
        page.mouse.click(box["x"] + args.click[0] * box["width"], box["y"] + args.click[1] * box["height"])
        page.mouse.move(box["x"] + box["width"] + 50, box["y"] + 10)  # off the scene
        readout = _row_input(page, "Clicked point")
        deadline = time.time() + 120
        while readout.input_value() == "click in the scene" and time.time() < deadline:
            time.sleep(1)
        print(f"clicked point: {readout.input_value()}")
    # The viewer renders a low-resolution frame first, then one whose long side is
    # "Max res"; the frame is final when that resolution is reached and the canvas
    # has not changed for `stable` seconds.
    max_res = args.max_res  # the viewer's "Max res" slider (default 512)
    stats = page.get_by_text(re.compile(r"Resolution: \d+x\d+px")).first
    region = _scene_canvas(page).bounding_box()
    previous, stable_since, deadline = None, time.time(), time.time() + args.render_timeout
    while time.time() < deadline:
        time.sleep(args.poll)
        width, height = map(int, re.search(r"(\d+)x(\d+)px", stats.inner_text()).groups())
        digest = hashlib.sha1(page.screenshot(clip=region)).hexdigest()
        if digest != previous or max(width, height) < max_res:
            previous, stable_since = digest, time.time()
        elif time.time() - stable_since >= args.stable:
            break
    else:
        print(f"warning: the render was not final after {args.render_timeout} s", file=sys.stderr)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        parser = argparse.ArgumentParser()
        parser.add_argument("serve")
        parser.add_argument("--load-config", required=True)
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--view", type=int, default=0)
        args = parser.parse_args()
        serve(args.load_config, args.port, args.view)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", required=True, help="config.yml of a trained ovs3d run")
    parser.add_argument("--output", default="docs/images/viewer-labels.png")
    parser.add_argument("--port", type=int, default=7077)
    parser.add_argument("--view", type=int, default=0, help="training camera to look through")
    parser.add_argument("--width", type=int, default=1900)
    parser.add_argument("--height", type=int, default=1300)
    parser.add_argument("--labels", help="type this into the 'Labels' field (';' separated)")
    parser.add_argument("--query", help="type this into the 'Free query' field")
    parser.add_argument("--output-type", help="choose this output in the Output type dropdown")
    parser.add_argument("--click", type=float, nargs=2, metavar=("FX", "FY"),
                        help="click the render at this fraction of its width and height (click readout)")
    parser.add_argument("--max-res", type=int, default=512, help="the viewer's 'Max res' setting")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--user-data-dir", default=f"/tmp/ovs3d-chromium-{os.getpid()}")
    parser.add_argument("--viewer-log", default="/tmp/ovs3d-viewer.log")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--render-timeout", type=float, default=300.0)
    parser.add_argument("--stable", type=float, default=10.0, help="seconds without change = render done")
    parser.add_argument("--poll", type=float, default=5.0)
    shoot(parser.parse_args())


if __name__ == "__main__":
    main()
