"""Several broker URLs (a cluster's nodes): a list, or one string with commas between them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leveret.schemas.errors import ConfigurationError
from leveret.services import config
from leveret.services.broker import Broker
from leveret.services.rabbitmq.transport import delay_queues_for


def test_a_comma_separated_setting_and_a_list_name_the_same_nodes() -> None:
    nodes = ["amqp://u:p@a:5672/", "amqps://u:p@b:5671/v", "amqp://c"]
    joined = config.broker_url(nodes)
    assert joined == ",".join(nodes)
    assert config.broker_urls(joined) == nodes
    assert config.broker_urls(" amqp://a , amqp://b ") == ["amqp://a", "amqp://b"]
    assert config.scheme(joined) == "amqp"


def test_the_environment_may_list_several_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.BROKER_URL_ENV, "amqp://a:1@n1,amqp://a:1@n2")
    assert config.broker_urls(config.broker_url()) == ["amqp://a:1@n1", "amqp://a:1@n2"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("amqp://a,,amqp://b", "empty broker URL"),
        ("amqp://a,", "empty broker URL"),
        ("amqp://a,memory://", "memory:// cannot be one of several"),
        ("amqp://a,http://b", "unknown broker URL scheme"),
        ([], "non-empty list"),
        (["amqp://a", ""], "non-empty list"),
        (["amqp://a", 5], "non-empty list"),
    ],
)
def test_a_bad_list_is_refused_where_it_is_given(setting: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        config.scheme(config.broker_url(setting))  # type: ignore[arg-type]


_password = st.text(
    st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=20
).filter(lambda text: "://" not in text and ",," not in text)


@given(st.lists(st.tuples(st.sampled_from(["amqp", "amqps"]), _password), min_size=1, max_size=4))
def test_passwords_with_commas_do_not_split_a_url(nodes: list[tuple[str, str]]) -> None:
    """A comma starts the next URL only where a scheme follows it."""
    urls = [
        f"{scheme}://user:{password}@node{n}:5672/" for n, (scheme, password) in enumerate(nodes)
    ]
    assert config.broker_urls(",".join(urls)) == urls


def test_delay_levels_are_quorum_on_several_nodes_and_classic_on_one_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LEVERET_DELAY_QUEUES", raising=False)
    assert delay_queues_for("amqp://a", None) == "classic"
    assert delay_queues_for("amqp://a,amqp://b", None) == "quorum"
    assert delay_queues_for("amqp://a,amqp://b", "classic") == "classic"
    assert delay_queues_for("amqp://a", "quorum") == "quorum"
    monkeypatch.setenv("LEVERET_DELAY_QUEUES", "quorum")
    assert delay_queues_for("amqp://a", None) == "quorum"
    monkeypatch.setenv("LEVERET_DELAY_QUEUES", "classic")
    assert delay_queues_for("amqp://a,amqp://b", None) == "classic"
    monkeypatch.setenv("LEVERET_DELAY_QUEUES", "mirrored")
    with pytest.raises(ConfigurationError, match="'classic' or 'quorum'"):
        delay_queues_for("amqp://a", None)


def test_a_broker_takes_a_list_of_nodes_and_its_repr_hides_every_password() -> None:
    broker = Broker(["amqp://u:S3cret@n1/", "amqp://u:0ther@n2/"], namespace="urls")
    try:
        assert broker.url == "amqp://u:S3cret@n1/,amqp://u:0ther@n2/"
        assert "S3cret" not in repr(broker)
        assert "0ther" not in repr(broker)
    finally:
        broker.close()
