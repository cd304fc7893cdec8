"""What the web providers share: their site root, browser-like sessions, cookies and state.

A web provider talks to a chat website rather than an API. Every URL it uses derives from one
root (its built-in site, or ``base_url``), so a mirror, a proxy or a test fake can stand in.
Cookies are kept per *canonical* domain (``cookie_domain``): the cookies of chat-gpt.org are
sent to whatever root Aichat is pointed at, and cookies the site sets are saved back under
that domain for the next process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from http.cookies import Morsel
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from chatcli.errors import MissingAuthError, UsageError
from chatcli.providers.base import BaseProvider
from chatcli.store import Cookie, Stores

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("chatcli.web")


class WebProvider(BaseProvider):
    """Base of the providers that drive a chat website."""

    kind = "web"
    uses_stores = True
    #: The domain whose cookies this provider uses and saves, whatever root it talks to.
    cookie_domain: ClassVar[str] = ""

    @classmethod
    def root_url(cls, base_url: str | None = None) -> str:
        """``base_url``, else the scheme and host of :attr:`url` (no trailing slash)."""
        if base_url:
            return base_url.rstrip("/")
        parts = urlsplit(cls.url)
        return f"{parts.scheme}://{parts.netloc}"

    def describe(self) -> dict[str, Any]:
        facts = super().describe()
        if self.needs_cookies():
            stores = self.config.stores
            facts["cookie_domain"] = self.cookie_domain
            facts["cookies_stored"] = (
                len(stores.cookies.for_domain(self.cookie_domain)) if stores is not None else 0
            )
        return facts

    @functools.cached_property
    def site_stores(self) -> Stores:
        """Where this instance keeps cookies and login state: the stores it was configured
        with, else the ones the environment points at (found once per instance)."""
        if self.config.stores is not None:
            return self.config.stores
        from chatcli.providers.base import default_stores

        return default_stores()

    def site_session(
        self, headers: Mapping[str, str], *, cookies: Mapping[str, str] | None = None
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientSession]:
        """:meth:`browser_session` at this instance's root, through its proxy and timeout."""
        return self.browser_session(
            root=self.root,
            store=self.site_stores,
            proxy=self.config.proxy,
            timeout=self.config.timeout,
            headers=headers,
            cookies=cookies,
        )

    @classmethod
    @contextlib.asynccontextmanager
    async def browser_session(
        cls,
        *,
        root: str,
        store: Stores,
        proxy: str | None,
        timeout: float | None,
        headers: Mapping[str, str],
        cookies: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientSession]:
        """A session that starts with the stored cookies (or ``cookies``) and saves new ones.

        Cookies the site sets are saved even when the request then fails: a login that
        succeeded is not thrown away because the answer after it did not come.
        """
        from yarl import URL

        from chatcli.providers import http

        start = dict(cookies) if cookies is not None else cls.stored_cookies(store)
        async with http.open_session(
            base_url=root, proxy=proxy, timeout=timeout, headers=headers
        ) as session:
            # Bound to the root's host, so a cookie the site sets replaces the same name.
            session.cookie_jar.update_cookies(start, response_url=URL(root))
            try:
                yield session
            finally:
                cls.save_cookies(store, session.cookie_jar, unchanged=start)

    @classmethod
    async def fetch_json(
        cls,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        secrets: Iterable[str | None] = (),
        auth_hint: str = "",
        **kwargs: Any,
    ) -> Any:
        """One request whose answer is JSON: failures become chatcli's one-line errors."""
        from chatcli.providers import http

        with http.http_errors(cls.name, url):
            async with session.request(method, url, **kwargs) as response:
                await http.check_status(response, cls.name, auth_hint=auth_hint, secrets=secrets)
                return await http.read_json(response, cls.name)

    @classmethod
    def needs_cookies(cls) -> bool:
        """Whether the provider cannot work without the cookies of :attr:`cookie_domain`."""
        return bool(cls.cookie_domain) and cls.needs_auth

    @classmethod
    def stored_cookies(cls, store: Stores) -> dict[str, str]:
        """The unexpired cookies of :attr:`cookie_domain`. For a provider that needs them, when
        none are stored or some have expired, those read from the browser config.toml names
        (``[cookies] from_browser``); without that opt-in no browser is ever read."""
        if not cls.cookie_domain:
            return {}
        found, some_expired = store.cookies.lookup(cls.cookie_domain)
        if cls.needs_cookies() and (not found or some_expired):
            found = cls.cookies_from_browser(store, have=found) or found
        return found

    @classmethod
    def cookies_from_browser(cls, store: Stores, *, have: dict[str, str]) -> dict[str, str]:
        """Only with the opt-in: read, save and announce (one line on stderr) the browser's
        cookies of :attr:`cookie_domain`. Without it, nothing is read: ``{}``. A failed read
        is an error when nothing usable is stored (``have``), else a warning."""
        source = store.browser_source()
        if source is None:
            return {}
        browser, profile = source
        from chatcli.browser import import_from_browser

        why = "cookies.from_browser in config.toml"
        try:
            import_from_browser(
                store.cookies,
                browser,
                [cls.cookie_domain],
                env=store.env,
                cache_dir=store.cache_dir,
                profile=profile,
            )
        except UsageError as exc:
            if have:
                # Dropped, so that neither a retry nor the next run reads the browser again.
                store.cookies.drop_expired(cls.cookie_domain)
                log.warning("could not refresh expired cookies from %s (%s): %s", browser, why, exc)
                return {}
            raise MissingAuthError(
                f"needs cookies for {cls.cookie_domain}, none are stored, and reading them from "
                f"{browser} ({why}) failed: {exc}",
                provider=cls.name,
            ) from None
        found = store.cookies.for_domain(cls.cookie_domain)  # only those it will send
        log.warning(
            "read %d cookie(s) for %s from %s (%s)",
            len(found),
            cls.cookie_domain,
            browser,
            why,
            extra={"notice": True},
        )
        return found

    @classmethod
    def save_cookies(
        cls, store: Stores, jar: aiohttp.abc.AbstractCookieJar, *, unchanged: Mapping[str, str]
    ) -> None:
        if not cls.cookie_domain:
            return
        now = time.time()
        fresh = [
            _cookie_from_morsel(cls.cookie_domain, morsel, now)
            for morsel in jar
            if unchanged.get(morsel.key) != morsel.value
        ]
        if fresh:
            store.cookies.save(fresh)
            log.debug("%s: saved %d cookie(s) for %s", cls.name, len(fresh), cls.cookie_domain)
        # A cookie the site deleted (Max-Age=0, a past Expires) left the jar: forget it too.
        gone = set(unchanged) - {morsel.key for morsel in jar}
        if gone:
            store.cookies.remove(cls.cookie_domain, gone)
            log.debug("%s: the site removed %d cookie(s)", cls.name, len(gone))


def _cookie_from_morsel(domain: str, morsel: Morsel[str], now: float) -> Cookie:
    expires: float | None = None
    max_age = morsel["max-age"]
    if max_age:
        try:
            expires = now + int(max_age)
        except ValueError:
            expires = None
    elif morsel["expires"]:
        import email.utils

        try:
            expires = email.utils.parsedate_to_datetime(morsel["expires"]).timestamp()
        except (TypeError, ValueError):
            expires = None
    return Cookie(
        domain=domain,
        name=morsel.key,
        value=morsel.value,
        path=morsel["path"] or "/",
        expires=expires,
        secure=bool(morsel["secure"]),
        http_only=bool(morsel["httponly"]),
    )
