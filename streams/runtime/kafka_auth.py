"""How every Kafka client of Wharf connects: the one place that turns the settings into client arguments.

With `kafka_security = "sasl_scram"` each client (aiokafka producers, consumers and admin
clients, Faust's broker) logs in with SCRAM-SHA-512 as `kafka_user`; the password is the
setting or the secret `wharf infra up` generated (schemas/secrets.py). A client built
anywhere else without these arguments would be refused by the broker, so none is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import faust

    from schemas.settings import Settings

MECHANISM = "SCRAM-SHA-512"


def kafka_client(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: bootstrap servers and, with SASL on, the login."""
    out: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap}
    if settings.kafka_security == "sasl_scram":
        from schemas.secrets import kafka_password

        out.update(security_protocol="SASL_PLAINTEXT", sasl_mechanism=MECHANISM,
                   sasl_plain_username=settings.kafka_user, sasl_plain_password=kafka_password(settings))
    return out


def faust_credentials(settings: Settings) -> faust.SASLCredentials | None:
    """Faust's `broker_credentials` (None: plaintext); Faust hands them to its aiokafka clients."""
    if settings.kafka_security != "sasl_scram":
        return None
    import faust

    from schemas.secrets import kafka_password

    return faust.SASLCredentials(username=settings.kafka_user, password=kafka_password(settings), mechanism=MECHANISM)


def as_user(settings: Settings, user: str, password: str) -> Settings:
    """The same settings, logged in as another Kafka user (`wharf infra up` acts as the admin)."""
    from pydantic import SecretStr

    return settings.model_copy(update={"kafka_user": user, "kafka_password": SecretStr(password)})
