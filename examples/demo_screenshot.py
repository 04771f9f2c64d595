"""Write docs/demo_screenshot.png: the browser demo editing skimage's astronaut photo with a real checkpoint.

    python examples/demo_screenshot.py --ckpt outputs/synthetic/version_0/checkpoints/last.ckpt --overwrite

Serves ``segexpr demo``'s page (:func:`segexpr.demo.build_demo`, face detection on) for the checkpoint on
127.0.0.1, drives it in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, the ``selenium``
package): uploads ``skimage.data.astronaut()``, clicks an expression, waits for the result, checks that the page
shows the same photo ``segexpr edit`` would write (up to gradio's lossy image encoding) and saves the page.
Needs the ``photo`` and ``demo`` extras and scikit-image. An existing ``--out`` is refused before any work unless
``--overwrite``; the picture is written atomically.
"""
from __future__ import annotations

import argparse
import socket
import tempfile
import time
import urllib.request
from io import BytesIO
from pathlib import Path
from urllib.parse import urlparse

from segexpr.files import refuse_existing, write_bytes

TIMEOUT = 120  # seconds, for every browser wait


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chrome(profile: Path, chromium: str, chromedriver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--disable-gpu", "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps",
                f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    return driver


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Screenshot the browser demo editing the astronaut photo with a "
                                                 "real checkpoint (docs/demo_screenshot.png).")
    parser.add_argument("--ckpt", required=True, help="JointModule checkpoint, e.g. the README quickstart's last.ckpt")
    parser.add_argument("--expression", default="surprise", help="the expression button to click (default: surprise)")
    parser.add_argument("--out", type=Path, default=Path("docs/demo_screenshot.png"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    try:  # before loading anything: an existing picture is only replaced on request
        refuse_existing([args.out], overwrite=args.overwrite)
    except FileExistsError as err:
        raise SystemExit(f"demo_screenshot.py: {err}") from None

    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    from skimage.data import astronaut

    from segexpr.demo import build_demo, edit_with_expression
    from segexpr.inference.photo import load_photo_editor

    editor = load_photo_editor(args.ckpt, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo_path = tmp / "astronaut.png"
        Image.fromarray(astronaut()).save(photo_path)
        app = build_demo(editor, photo_editing=True)
        port, driver = _free_port(), None
        try:
            app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
            driver = _chrome(tmp / "profile", args.chromium, args.chromedriver)
            wait = WebDriverWait(driver, TIMEOUT)
            driver.get(f"http://127.0.0.1:{port}/")
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#source input[type=file]"))).send_keys(
                str(photo_path))
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#source img[src]")))
            wait.until(EC.element_to_be_clickable((By.ID, f"expr-{args.expression}"))).click()
            result = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#result img[src]")))
            wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "face detected"))
            for element in ("#faces img[src]", "#parsing img[src]"):
                wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, element)))
            src = result.get_attribute("src")
            if urlparse(src).hostname != "127.0.0.1":
                raise SystemExit(f"demo_screenshot.py: the result came from {src}, not the demo server")
            with urllib.request.urlopen(src, timeout=TIMEOUT) as response:
                shown = np.asarray(Image.open(BytesIO(response.read())).convert("RGB"), np.float32)
            original = Image.open(photo_path).convert("RGB")
            expected = np.asarray(edit_with_expression(editor, original, args.expression).result, np.float32)
            before = np.asarray(original, np.float32)
            # where the model changed the photo by more than gradio's lossy encoding does, the page must show the
            # model's pixels, not the upload's
            changed = np.abs(expected - before).max(-1) > 12
            to_edit, to_photo = (float(np.abs(shown - x)[changed].mean()) for x in (expected, before))
            if shown.shape != expected.shape or changed.sum() < 100 or not to_edit < to_photo / 2:
                raise SystemExit(f"demo_screenshot.py: the page does not show the model's edit ({changed.sum()} "
                                 f"changed pixels; page-edit {to_edit:.2f}, page-photo {to_photo:.2f} levels)")
            change = float(np.abs(expected - before)[changed].mean())
            height = int(driver.execute_script("return document.documentElement.scrollHeight"))
            driver.set_window_size(1280, height + 150)  # the whole page: result, detected face, parsing overlay
            time.sleep(1.5)  # let the images finish painting
            png = driver.get_screenshot_as_png()
        finally:
            if driver is not None:
                driver.quit()
            app.close()
    write_bytes(args.out, png, overwrite=args.overwrite)  # atomic
    print(f"{args.out}: the demo page, {args.expression} on the astronaut ({int(changed.sum())} pixels changed by "
          f"{change:.1f} levels on average; the page is {to_edit:.1f} levels from the edit, {to_photo:.1f} from the "
          f"photo there)")
    return args.out


if __name__ == "__main__":
    main()
