"""The README's quick start works as written: publisher script, then a real worker."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT, WorkerProcess, wait_until

EXAMPLE = ROOT / "examples" / "quickstart"


def test_quickstart_publish_then_worker_handles_the_chain(rabbit_url: str, namespace: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": f"{EXAMPLE}{os.pathsep}{ROOT}",
        "LEVERET_BROKER_URL": rabbit_url,
        "LEVERET_NAMESPACE": namespace,
    }
    published = subprocess.run(
        [sys.executable, "publish.py", "3"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert published.returncode == 0, published.stderr
    assert published.stdout.count("published order") == 3
    worker = WorkerProcess(["shop_actors"], namespace, env={"PYTHONPATH": env["PYTHONPATH"]})
    try:
        worker.wait_consuming()
        wait_until(lambda: worker.log().count('"invoice_mailed"') == 3, 20, "3 invoices mailed")
        assert worker.log().count('"message_handled"') == 6
    finally:
        worker.stop()
        subprocess.run(
            [sys.executable, "-c", _CLEANUP, namespace],
            cwd=EXAMPLE,
            env=env,
            check=True,
            timeout=60,
        )


_CLEANUP = """
import sys
from leveret.services import RabbitBroker
from shop_actors import Billing, send_invoice_mail
broker = RabbitBroker(namespace=sys.argv[1])
broker.delete(Billing, send_invoice_mail)
broker.delete_namespace_exchanges()
broker.close()
"""
