"""The RabbitMQ compatibility check (tests/rabbitmq_check.py) as part of `make test`: a real RabbitMQ node
with the MQTT plugin, a real agent, `fleet list --group`, a signed `push --group` and a rollback through
it. About 25 s on the 2-core VM under load; `make rabbitmq-check` runs the same and prints each step's
time. `make test` installs Debian's rabbitmq-server."""

from __future__ import annotations

import pytest

import rabbitmq_check


@pytest.mark.slow
def test_the_agent_discovery_a_group_push_and_a_rollback_work_through_rabbitmq(tmp_path):
    if not rabbitmq_check.RABBITMQ_SERVER.exists():
        pytest.fail(f"{rabbitmq_check.RABBITMQ_SERVER} is missing: `make test` installs rabbitmq-server with apt-get")
    steps = rabbitmq_check.Steps()
    try:
        rabbitmq_check.check(tmp_path, steps)
    except rabbitmq_check.Failed as failure:
        pytest.fail(str(failure), pytrace=False)
