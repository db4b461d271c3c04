"""The README's quick start works as written: publisher script, then a real worker."""

from __future__ import annotations

import os

from tests.support import ROOT, WorkerProcess, run_python, wait_until

EXAMPLE = ROOT / "examples" / "quickstart"


def test_quickstart_publish_then_worker_handles_the_chain(rabbit_url: str, namespace: str) -> None:
    env = {
        "PYTHONPATH": f"{EXAMPLE}{os.pathsep}{ROOT}",
        "LEVERET_BROKER_URL": rabbit_url,
        "LEVERET_NAMESPACE": namespace,
    }
    published = run_python("publish.py", "3", env=env, cwd=EXAMPLE)
    assert published.returncode == 0, published.stderr
    assert published.stdout.count("published order") == 3
    worker = WorkerProcess(["shop_actors"], namespace, env={"PYTHONPATH": env["PYTHONPATH"]})
    try:
        worker.wait_consuming()
        wait_until(lambda: worker.log().count('"invoice_mailed"') == 3, 20, "3 invoices mailed")
        assert worker.log().count('"message_handled"') == 6
    finally:
        worker.stop()
        cleaned = run_python("-c", _CLEANUP, namespace, env=env, cwd=EXAMPLE)
        assert cleaned.returncode == 0, cleaned.stderr


_CLEANUP = """
import sys
from leveret.services import RabbitBroker
from shop_actors import Billing, send_invoice_mail
broker = RabbitBroker(namespace=sys.argv[1])
broker.delete(Billing, send_invoice_mail)
broker.delete_namespace_exchanges()
broker.close()
"""
