"""Screenshots of a demo run in MLflow's UI, as a user sees it: headless Chromium (Debian's
``chromium`` package) driven by Playwright, against ``mlflow ui`` on loopback.

    make demo
    mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5055 &
    python -m venv /tmp/pw && /tmp/pw/bin/pip install playwright   # its own venv: not a bigtrain dependency
    /tmp/pw/bin/python docs/mlflow_screenshots.py http://127.0.0.1:5055 EXPERIMENT_ID RUN_ID docs/images

The UI opens in its "Model training" view (``?workflowType=machine_learning``); the assistant panel
is closed before each shot.
"""

import re
import sys

from playwright.sync_api import sync_playwright

base, exp, run, out = sys.argv[1:5]
q = "workflowType=machine_learning"
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": 900})

    def close_assistant():
        for label in ("Close", "close"):
            btns = page.get_by_role("button", name=label)
            if btns.count():
                try:
                    btns.last.click(timeout=2000)
                    page.wait_for_timeout(500)
                except Exception:
                    pass
                return

    # charts of the run: FID and the losses
    page.goto(f"{base}/#/experiments/{exp}/runs/{run}/model-metrics?{q}")
    page.wait_for_timeout(4000)
    close_assistant()
    box = page.get_by_placeholder("Search metric charts")
    for term, name in (("digits", "mlflow_run_eval_charts"), ("loss/", "mlflow_run_loss_charts")):
        box.fill(term)
        page.wait_for_timeout(4000)
        page.screenshot(path=f"{out}/{name}.png")
    # the run's overview: dataset, tags, logged model
    page.goto(f"{base}/#/experiments/{exp}/runs/{run}?{q}")
    page.wait_for_timeout(4000)
    close_assistant()
    page.screenshot(path=f"{out}/mlflow_run_overview.png")
    # sample grids (images logged with a step)
    page.goto(f"{base}/#/experiments/{exp}/runs/{run}/artifacts?{q}")
    page.wait_for_timeout(3000)
    close_assistant()
    page.get_by_text("images", exact=True).first.click()
    page.wait_for_timeout(2000)
    page.get_by_text(re.compile(r"samples\+step\+3000\+.*png")).first.click()  # the last grid
    page.wait_for_timeout(3000)
    page.screenshot(path=f"{out}/mlflow_run_images.png")
    # the experiment's logged models
    page.goto(f"{base}/#/experiments/{exp}/models?{q}")
    page.wait_for_timeout(4000)
    close_assistant()
    page.screenshot(path=f"{out}/mlflow_logged_models.png")
    browser.close()
