"""`KafkaSettings`: brokers, topics, security and client tuning (`KLEIN_EDIT_KAFKA__*`).

One section of the worker's `consumer.settings.Settings`; the Kafka plumbing in this package reads it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "klein-edit"
    client_id: str = "klein-edit"
    request_topic: str = Field(default="edit.requests", description="Lowest-priority request topic.")
    priority_topics: list[str] = Field(
        default_factory=list,
        description="Higher-priority request topics, most urgent first; read before request_topic.",
    )
    low_lane_share: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description=(
            "Share of turns handed down to the lanes below the most urgent lane with work; "
            "they share it by the same rule, so no lane starves."
        ),
    )
    result_topic: str = "edit.results"
    dlq_topic: str = "edit.requests.dlq"
    progress_topic: str = "edit.progress"
    control_topic: str = "edit.control"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    oauth_provider: Literal["oidc", "aws_msk_iam"] = Field(
        default="oidc",
        description="Where OAUTHBEARER tokens come from: an OIDC client-credentials grant (Confluent "
        "Cloud, Event Hubs, Keycloak, ...) or AWS MSK IAM (the default AWS credential chain).",
    )
    oauth_token_endpoint: str | None = Field(
        default=None, description="OIDC token URL (oauth_provider oidc)."
    )
    oauth_client_id: str | None = Field(default=None, description="OIDC client id (oauth_provider oidc).")
    oauth_client_secret: SecretStr | None = Field(
        default=None, description="OIDC client secret (oauth_provider oidc)."
    )
    oauth_scope: str | None = Field(
        default=None,
        description="OIDC scope, space-separated; Event Hubs: https://<namespace>.servicebus.windows.net/.default.",
    )
    oauth_client_auth: Literal["client_secret_post", "client_secret_basic"] = Field(
        default="client_secret_post",
        description="How the client authenticates to the token endpoint: form fields or HTTP Basic.",
    )
    oauth_extensions: dict[str, str] = Field(
        default_factory=dict,
        description="SASL extensions sent with the token (Confluent Cloud: logicalCluster, identityPoolId).",
    )
    oauth_refresh_margin_s: float = Field(
        default=60.0, ge=0.0, description="A cached token is replaced this long before it expires."
    )
    aws_msk_iam_region: str | None = Field(
        default=None, description="AWS region of the MSK cluster (oauth_provider aws_msk_iam)."
    )
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    group_instance_id: str | None = Field(
        default=None,
        min_length=1,
        description="Static membership (KIP-345): a member that rejoins under the same id within "
        "session_timeout_ms gets its partitions back without a rebalance. Unique per worker (the "
        "chart uses the pod name); such a member does not leave the group on shutdown.",
    )
    session_timeout_ms: int = Field(default=30_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    rebalance_timeout_ms: int = Field(
        default=30_000, ge=1000, description="How long the group waits for members to rejoin a rebalance."
    )
    max_poll_interval_ms: int = Field(
        default=300_000, ge=1000, description="Edits may run longer: partitions are paused and polled."
    )
    enable_idempotence: bool = Field(default=False, description="Needs broker support (Tansu lacks it).")
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        default="read_committed",
        description="read_committed: records of aborted transactions are never edited (nor cancels applied).",
    )
    request_timeout_ms: int = Field(default=30_000, ge=1000)
    startup_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="At start-up the worker retries unreachable brokers for as long as it takes (keeping "
        "the loaded model, not ready meanwhile); after this long each retry is logged as an error.",
    )
    create_topics: bool = Field(
        default=False,
        description="Create missing topics at start-up (the control topic; the result topic for "
        "`submit --wait`) with topic_partitions and topic_replication_factor. For development and "
        "tests: on a production cluster the topics are provisioned by operators (docs/operations.md), "
        "and a missing topic stops start-up with a message naming it.",
    )
    topic_partitions: int = Field(
        default=4, ge=1, description="Partitions of topics that klein-edit creates itself (create_topics)."
    )
    topic_replication_factor: int = Field(
        default=1, ge=1, description="Replication factor of topics klein-edit creates itself (create_topics)."
    )
    max_request_bytes: int = Field(
        default=1_048_576, ge=1024, description="Larger request records are rejected."
    )

    @model_validator(mode="after")
    def _oauth_complete(self) -> KafkaSettings:
        if self.sasl_mechanism != "OAUTHBEARER":
            return self
        if not self.security_protocol.startswith("SASL"):
            raise ValueError(
                "sasl_mechanism OAUTHBEARER needs security_protocol SASL_SSL (or SASL_PLAINTEXT)"
            )
        if self.oauth_provider == "aws_msk_iam":
            if not self.aws_msk_iam_region:
                raise ValueError("oauth_provider aws_msk_iam needs aws_msk_iam_region")
            return self
        missing = [
            name
            for name in ("oauth_token_endpoint", "oauth_client_id", "oauth_client_secret")
            if getattr(self, name) is None
        ]
        if missing:
            raise ValueError(f"oauth_provider oidc needs {', '.join(missing)}")
        return self

    @property
    def request_topics(self) -> list[str]:
        """All request topics, most urgent first."""
        return [*self.priority_topics, self.request_topic]
