"""The Node client (clients/node/tessera.js) where it lagged the Python SDK: its target and
TESSERA_TARGET checked as check_target checks them, and SubmitJob sent with a request id and sent again with it
when its answer is lost."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from tessera.transport import check_target
from tests.integration.sdk.test_node_client import node_json, node_ready, run_node_script, small_spec, table

__all__ = ["node_ready", "table"]


def clients_made(targets: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Node makes a Client of each of `targets` (a JS array): 'made', or the error's name and message."""
    return run_node_script(
        f"""
        for (const given of {targets}) {{
          try {{
            new Client(given);
            console.log('made');
          }} catch (err) {{
            console.log(`${{err.name}}: ${{err.message}}`);
          }}
        }}
        """,
        "unused",
        env=env,
    )


@pytest.mark.parametrize("text", ["http://127.0.0.1:1", "https://tessera.example/v1", "127.0.0.1"])
def test_node_client_checks_its_target_and_tessera_target_as_the_python_sdk_does(node_ready, text):
    """A target given to the constructor went to gRPC unchecked, and failed at the first call."""
    made = clients_made("[undefined, process.env.TESSERA_TARGET]", env={"TESSERA_TARGET": text})
    said = []
    for where in ("in env TESSERA_TARGET", "as the client's target"):
        with pytest.raises(ValueError, match="write HOST:PORT") as python:
            check_target(text, where, "tls: true")
        said.append(f"RangeError: {python.value}\n")
    assert made.stdout == "".join(said), made.stderr


def test_node_client_refuses_an_empty_target_and_one_that_is_not_a_string_in_words(node_ready):
    """An empty target is said to be empty as the Python SDK says it; a number (a port alone) is
    a TypeError naming the string wanted, not "text.startsWith is not a function"."""
    made = clients_made("[50051, '']")
    with pytest.raises(ValueError, match="is empty") as empty:
        check_target("", "as the client's target", "tls: true")
    assert made.stdout == (
        "TypeError: the target must be a string, HOST:PORT (e.g. 127.0.0.1:50051), not number, as the "
        f"client's target\nRangeError: {empty.value}\n"
    ), made.stderr


def test_node_submit_whose_answer_is_cut_off_is_sent_again_into_one_job(node_ready, daemon, table, proxy_to):
    proxy = proxy_to(daemon.daemon.port)
    proxy.cut_at_next_answer()
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const job = await client.submitJob({json.dumps(small_spec(table))});
          const jobs = await client.listJobs({{ experiment: 'node' }});
          console.log(JSON.stringify({{ job: job.job_id, jobs: jobs.map((j) => j.job_id) }}));
          client.close();
        }})();
        """,
        proxy.target,
    )
    assert proxy.cuts == 1
    assert found["jobs"] == [found["job"]]


def test_node_submit_with_a_request_id_answers_a_repeat_with_the_same_job(node_ready, daemon, table):
    request_id = str(uuid.uuid4())
    found = node_json(
        f"""
        (async () => {{
          const client = new Client(TARGET);
          const spec = {json.dumps(small_spec(table))};
          const first = await client.submitJob(spec, {{ requestId: {json.dumps(request_id)} }});
          const again = await client.submitJob(spec, {{ requestId: {json.dumps(request_id)} }});
          const refused = [];
          for (const requestId of ['', 'x'.repeat(65), 'has space']) {{
            try {{
              await client.submitJob(spec, {{ requestId }});
            }} catch (err) {{
              refused.push(`${{err.name}}: ${{err.message}}`);
            }}
          }}
          const jobs = await client.listJobs({{ experiment: 'node' }});
          console.log(JSON.stringify({{ first: first.job_id, again: again.job_id, refused, jobs: jobs.length }}));
          client.close();
        }})();
        """,
        daemon.target,
    )
    assert found["again"] == found["first"] and found["jobs"] == 1
    assert len(found["refused"]) == 3
    assert all(
        message.startswith("RangeError: requestId: ")
        and message.endswith(
            "leave it out for a generated one, or give 1 to 64 characters from A-Z a-z 0-9 - _"
        )
        for message in found["refused"]
    ), found["refused"]
