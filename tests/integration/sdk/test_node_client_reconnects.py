"""The Node client's reconnecting streams (watchJob, logMetricsStream) as its submitJob and the
Python SDK's: cancelCalls ends their wait to reconnect, nothing being sent after it, and one
that gives up says so with the last status gRPC gave."""

from __future__ import annotations

import json
import re
import socket

import pytest

from tests.integration.sdk.test_node_client import node_json, node_ready

__all__ = ["node_ready"]

# Counts the calls of `client.training[METHOD]` and cancels every call once each try has failed,
# while the stream waits to try again.
CANCELLED_WHILE_WAITING = """
(async () => {
  const client = new Client(TARGET);
  const real = client.training[METHOD];
  let tries = 0;
  client.training[METHOD] = function counted(...args) {
    tries += 1;
    const call = real.apply(this, args);
    call.on('status', () => (AT_ONCE ? client.cancelCalls() : setImmediate(() => client.cancelCalls())));
    return call;
  };
  // The method's description (path, serializers), which a submit's check reads.
  Object.assign(client.training[METHOD], real);
  const outcome = {};
  try {
    await STREAM;
  } catch (err) {
    Object.assign(outcome, { code: err.code, message: err.message, storedPoints: err.storedPoints });
  }
  client.close();
  console.log(JSON.stringify({ ...outcome, tries }));
})();
"""


def cancelled_while_waiting(method: str, stream: str, at_once: bool) -> dict[str, object]:
    """What `stream` (an expression awaited) ends with, and how many calls of `method` it made,
    against a target where nothing listens: each try fails UNAVAILABLE. `at_once`: cancelled as
    the try's status arrives, before the stream's loop reaches its wait (no call in flight and
    no wait to cancel then); else once it waits."""
    script = (
        CANCELLED_WHILE_WAITING.replace("METHOD", json.dumps(method))
        .replace("STREAM", stream)
        .replace("AT_ONCE", json.dumps(at_once))
    )
    found: dict[str, object] = node_json(script, "127.0.0.1:1")
    return found


AT_ONCE = pytest.mark.parametrize("at_once", [False, True], ids=["waiting", "before-its-wait"])


@AT_ONCE
def test_node_cancel_calls_ends_a_watch_waiting_to_reconnect(node_ready, at_once):
    found = cancelled_while_waiting(
        "WatchJob",
        "(async () => { for await (const event of client.watchJob('job-1')) void event; })()",
        at_once,
    )
    assert (found["code"], found["tries"]) == ("CANCELLED", 1), found


@AT_ONCE
def test_node_cancel_calls_ends_a_submit_waiting_to_be_sent_again(node_ready, at_once):
    found = cancelled_while_waiting("SubmitJob", "client.submitJob({})", at_once)
    assert (found["code"], found["tries"]) == ("CANCELLED", 1), found


@AT_ONCE
def test_node_cancel_calls_ends_a_metric_stream_waiting_to_be_sent_again(node_ready, at_once):
    found = cancelled_while_waiting(
        "LogMetricsStream", "client.logMetricsStream('run-1', [[0, { loss: 1 }]])", at_once
    )
    assert (found["code"], found["tries"], found["storedPoints"]) == ("CANCELLED", 1, 0), found
    # As any other failure of the stream, it says what may be stored.
    assert found["message"] == (
        "CANCELLED: Cancelled on client (cut without the daemon saying what it stored: some points may be)"
    )


def test_node_metric_stream_that_gives_up_names_its_last_failure(node_ready):
    """As the Python SDK's: how many times it was sent again and the last status, after gRPC's
    code and details."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    found = node_json(
        """
        (async () => {
          const client = new Client(TARGET);
          const found = [];
          for (const reconnects of [1, 2]) {
            try {
              await client.logMetricsStream('run-1', [[0, { loss: 1 }]], { reconnects });
            } catch (err) {
              found.push({ code: err.code, details: err.details, message: err.message });
            }
          }
          client.close();
          console.log(JSON.stringify(found));
        })();
        """,
        f"127.0.0.1:{port}",
    )
    for failed, resends in zip(found, ("1 resend", "2 resends"), strict=True):
        assert failed["code"] == "UNAVAILABLE"
        assert failed["details"]
        assert failed["message"] == (
            f"UNAVAILABLE: {failed['details']} (gave up logging metrics to run run-1 after {resends}, "
            "the last failing UNAVAILABLE; cut without the daemon saying what it stored: some points may be)"
        )


def test_node_watch_whose_timeout_ends_before_its_next_reconnect_says_so(node_ready):
    """As the Python SDK's: it threw gRPC's bare error, with neither the reconnects made nor the
    event to watch again from."""
    found = node_json(
        """
        (async () => {
          const client = new Client(TARGET);
          let message;
          try {
            for await (const event of client.watchJob('job-1', { fromSeq: 3, reconnects: 100, timeoutMs: 1500 })) {
              void event;
            }
          } catch (err) {
            message = err.message;
          }
          client.close();
          console.log(JSON.stringify({ message }));
        })();
        """,
        "127.0.0.1:1",
    )
    assert re.search(
        r" \(gave up watching job job-1 after \d+ reconnects, the last failing UNAVAILABLE: its timeout "
        r"ends before the next; watch again with fromSeq 3\)$",
        found["message"],
    ), found
