"""SASL/OAUTHBEARER token providers: a generic OIDC client-credentials grant, and AWS MSK IAM.

aiokafka asks its `sasl_oauth_token_provider` for a token on every broker connection it
authenticates (`AbstractTokenProvider.token()`), so both providers cache the token and fetch a new
one only when the cached one is within `refresh_margin_s` of its expiry. Which provider a client gets
is decided by `KafkaSettings` (`token_provider()`); `consumer.kafka.clients.client_kwargs` passes it to every
client the project makes.

- `OidcTokenProvider`: RFC 6749 §4.4 client credentials against any token endpoint (Microsoft Entra
  ID for Event Hubs, Okta/Keycloak/Auth0 for Confluent Cloud OAuth or a self-run cluster). HTTP via
  aiohttp on the event loop.
- `answer_oauthbearer_error_challenges()`: makes aiokafka end a refused OAUTHBEARER exchange as
  Apache Kafka expects, so a refused token is an authentication error, not a broker outage.
- `MskIamTokenProvider`: a SigV4-presigned `kafka-cluster:Connect` URL from
  `aws-msk-iam-sasl-signer-python`, signed with the default AWS credential chain (IRSA, EKS Pod
  Identity, instance role, `AWS_*` variables). Signing is local; only loading credentials may do
  I/O, so it runs in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal
from urllib.parse import quote_plus

import aiohttp
import aiokafka.conn
from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaConnectionError
from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
from pydantic import SecretStr

from consumer.kafka.settings import KafkaSettings

DEFAULT_REFRESH_MARGIN_S = 60.0
# A token endpoint that answers without expires_in: assume a short life rather than forever.
DEFAULT_TOKEN_LIFETIME_S = 300.0

ClientAuthMethod = Literal["client_secret_post", "client_secret_basic"]


class TokenUnavailableError(KafkaConnectionError):  # type: ignore[misc]  # aiokafka is untyped
    """No token could be had: the endpoint failed, refused the client, or answered without a token.

    Raised from `token()` during a broker connection's SASL step. It is a (retriable)
    `KafkaConnectionError`, so aiokafka treats it as an unreachable broker: bootstrap and reconnects
    back off and ask again, and the worker's start-up keeps retrying (unready, logged) instead of
    crashing on an unexpected exception.
    """


class _CachedToken:
    """One token, reused until `margin_s` before it expires (monotonic clock, seconds)."""

    def __init__(self, margin_s: float, clock: Callable[[], float]) -> None:
        self._margin_s = margin_s
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, fetch: Callable[[], Awaitable[tuple[str, float]]]) -> str:
        """The cached token, or a new one from `fetch()` -> (token, lifetime in s); one fetch at a time."""
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        async with self._lock:
            if self._token is not None and self._clock() < self._refresh_at:
                return self._token  # fetched by a concurrent caller meanwhile
            token, lifetime_s = await fetch()
            # A lifetime shorter than the margin is still used for half of it, not refetched in a loop.
            self._token = token
            self._refresh_at = self._clock() + max(lifetime_s - self._margin_s, lifetime_s / 2)
            return token


class OidcTokenProvider(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka is untyped
    """Access tokens from an OAuth 2.0 token endpoint by the client-credentials grant.

    `token_endpoint` is the IdP's token URL; `scope` is sent when given (Entra ID needs
    `https://<namespace>.servicebus.windows.net/.default` for Event Hubs). `extensions` are SASL
    extensions sent with the token (Confluent Cloud: `logicalCluster`, `identityPoolId`).
    `client_auth` sends the secret in the form body (`client_secret_post`, what every IdP accepts)
    or as HTTP Basic auth (`client_secret_basic`). The token is reused until `refresh_margin_s`
    before its `expires_in`. Raises `TokenUnavailableError` on a transport error, a non-2xx answer
    or an answer without `access_token`; the client secret never appears in a message.
    """

    def __init__(
        self,
        *,
        token_endpoint: str,
        client_id: str,
        client_secret: SecretStr,
        scope: str | None = None,
        extensions: Mapping[str, str] | None = None,
        client_auth: ClientAuthMethod = "client_secret_post",
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoint = token_endpoint
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._extensions = dict(extensions or {})
        self._client_auth = client_auth
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._cache = _CachedToken(refresh_margin_s, clock)
        self.fetches = 0  # how many times the endpoint was asked (for tests and debugging)

    async def token(self) -> str:
        return await self._cache.get(self._fetch)

    def extensions(self) -> dict[str, str]:
        return dict(self._extensions)

    async def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        headers = {"Accept": "application/json"}
        if self._client_auth == "client_secret_basic":
            # RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined and encoded.
            pair = f"{quote_plus(self._client_id)}:{quote_plus(self._client_secret.get_secret_value())}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form["client_id"] = self._client_id
            form["client_secret"] = self._client_secret.get_secret_value()
        self.fetches += 1
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.post(self._endpoint, data=form, headers=headers) as response,
            ):
                status = response.status
                body: Any = await response.json(content_type=None) if status < 300 else await response.text()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TokenUnavailableError(
                f"token endpoint {self._endpoint} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if status >= 300:
            raise TokenUnavailableError(
                f"token endpoint {self._endpoint} answered HTTP {status}: {str(body)[:200]}"
            )
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise TokenUnavailableError(f"token endpoint {self._endpoint} answered without an access_token")
        expires_in = body.get("expires_in", DEFAULT_TOKEN_LIFETIME_S)
        try:
            lifetime_s = float(expires_in)
        except (TypeError, ValueError):
            lifetime_s = DEFAULT_TOKEN_LIFETIME_S
        return body["access_token"], lifetime_s


class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka is untyped
    """AWS MSK IAM tokens (a presigned `kafka-cluster:Connect` URL, valid 15 min) for `region`.

    Credentials come from the default AWS chain each time a token is signed, so rotated role
    credentials are picked up. Raises `TokenUnavailableError` when no credentials are found.
    """

    def __init__(
        self,
        *,
        region: str,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._region = region
        self._cache = _CachedToken(refresh_margin_s, clock)

    async def token(self) -> str:
        return await self._cache.get(lambda: asyncio.to_thread(self._sign))

    def _sign(self) -> tuple[str, float]:
        try:
            token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(self._region)
        except Exception as exc:  # botocore raises several unrelated types; all mean "no token"
            raise TokenUnavailableError(f"MSK IAM token for {self._region}: {exc}") from exc
        lifetime_s = max(expiry_ms / 1000 - time.time(), 0.0)
        return str(token), lifetime_s


def token_provider(kafka: KafkaSettings) -> AbstractTokenProvider:
    """The OAUTHBEARER token provider that `kafka` names. Raises ValueError on incomplete settings."""
    if kafka.oauth_provider == "aws_msk_iam":
        if not kafka.aws_msk_iam_region:
            raise ValueError("oauth_provider aws_msk_iam needs aws_msk_iam_region")
        return MskIamTokenProvider(
            region=kafka.aws_msk_iam_region, refresh_margin_s=kafka.oauth_refresh_margin_s
        )
    endpoint, client_id, secret = kafka.oauth_token_endpoint, kafka.oauth_client_id, kafka.oauth_client_secret
    if endpoint is None or client_id is None or secret is None:
        raise ValueError(
            "oauth_provider oidc needs oauth_token_endpoint, oauth_client_id and oauth_client_secret"
        )
    return OidcTokenProvider(
        token_endpoint=endpoint,
        client_id=client_id,
        client_secret=secret,
        scope=kafka.oauth_scope,
        extensions=kafka.oauth_extensions,
        client_auth=kafka.oauth_client_auth,
        refresh_margin_s=kafka.oauth_refresh_margin_s,
    )


class _ChallengeAnsweringOAuthAuthenticator(aiokafka.conn.OAuthAuthenticator):  # type: ignore[misc]
    """aiokafka's OAUTHBEARER client step, plus the answer to the server's error challenge.

    A broker that refuses the token (Apache Kafka's `OAuthBearerValidatorCallbackHandler`: a wrong
    audience or issuer, a bad signature, an expired token) does not fail the SaslAuthenticate request
    that carried it: it answers with an error challenge (`{"status":"invalid_token"}`, RFC 7628
    §3.2.2) and waits for the client's `%x01` before it fails the exchange with
    SASL_AUTHENTICATION_FAILED. aiokafka 0.14 stops after sending the token and takes the challenge
    for success; its next request breaks the exchange and the broker drops the connection, which
    looks like an unreachable broker (retried forever, with a misleading message). Answering the
    challenge gets the broker's `SaslAuthenticationFailed`, which stops start-up naming the cause.
    """

    async def step(self, payload: bytes | None) -> tuple[bytes, bool] | None:
        if self._token_sent and payload:
            return b"\x01", True
        result: tuple[bytes, bool] | None = await super().step(payload)
        return result


def answer_oauthbearer_error_challenges() -> bool:
    """Make aiokafka's connections use `_ChallengeAnsweringOAuthAuthenticator`; True when in effect.

    False (nothing changed) on an aiokafka without the `conn.OAuthAuthenticator` seam;
    tests/consumer/kafka/test_security.py shows the effect against Apache Kafka.
    """
    current = getattr(aiokafka.conn, "OAuthAuthenticator", None)
    if current is None:
        return False
    if not issubclass(current, _ChallengeAnsweringOAuthAuthenticator):
        aiokafka.conn.OAuthAuthenticator = _ChallengeAnsweringOAuthAuthenticator
    return True
