"""From command-line choices to a ready :class:`~chatcli.conversation.Conversation` (``ask``,
``repl``, :class:`chatcli.Chat`).

Precedence, for each setting: the flag, then the continued session (its provider, model and
system prompt), then config and environment, then built-in defaults.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from chatcli import install_hint
from chatcli.config import PROXY_SCHEMES, Settings
from chatcli.context import AppContext
from chatcli.conversation import Conversation
from chatcli.core import ChatOptions
from chatcli.errors import ChatcliError, ConfigError, UsageError, check_url
from chatcli.providers import Registry
from chatcli.store import Session, Stores
from chatcli.store.sessions import check_session_name
from chatcli.templates import Applied, Templates
from chatcli.turn import TurnRequest

log = logging.getLogger("chatcli.chat")


def open_conversation(
    ctx: AppContext,
    chosen: ChatOptions,
    *,
    notice: Callable[[str], None] | None = None,
    tools: bool | None = None,
) -> Conversation:
    """A conversation set up as ``chosen`` asks, continuing a session when one was named,
    with the tools it asks for (asking for consent on the terminal); ``tools``: with a tool
    set even when none is on yet (``True``: the REPL's ``/tools on`` turns them on), or never
    (``False``: a command that takes none, whatever config.toml enables)."""
    settings = ctx.settings
    conversation = conversation_from(
        settings,
        Stores.for_context(ctx),
        chosen,
        notice=notice,
        templates=Templates(ctx.paths.config_dir / "templates"),
    )
    if tools is False:
        if chosen.tools or chosen.mcp:
            raise UsageError("this command takes no tools (--tool, --mcp)")
        return conversation
    if tools or chosen.tools or chosen.mcp or settings.tools.enabled:
        from pathlib import Path

        from chatcli.tools.consent import TerminalConsent
        from chatcli.tools.setup import toolset_for

        toolset = toolset_for(
            settings.tools,
            tools=chosen.tools,
            servers=chosen.mcp,
            allow=chosen.allow_tools,
            cwd=Path.cwd(),
            env=ctx.env,
            consent=TerminalConsent(ctx.stderr, _consent_keys(ctx)),
            log_dir=ctx.paths.state_dir,
            hidden={
                str(t["api_key_env"]) for t in settings.providers.values() if "api_key_env" in t
            },
        )
        if toolset or tools:
            conversation.toolset = toolset
    return conversation


def _consent_keys(ctx: AppContext) -> Callable[[], int | None]:
    """Where consent is asked: stdin's terminal, or the controlling terminal when stdin is
    piped and a person watches stderr (``None``: nobody to ask; opened once, when needed)."""
    found: list[int | None] = []

    def keys() -> int | None:
        if not found:
            found.append(_terminal_fd(ctx))
        return found[0]

    return keys


def _terminal_fd(ctx: AppContext) -> int | None:
    import os

    if not ctx.stderr_isatty:  # the question would go where nobody reads it
        return None
    if ctx.stdin_isatty and ctx.stdin is not None:
        try:
            return ctx.stdin.fileno()
        except (AttributeError, OSError, ValueError):
            return None
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)  # (open for the process's life)
    except OSError:
        return None


def conversation_from(
    settings: Settings,
    stores: Stores,
    chosen: ChatOptions,
    *,
    notice: Callable[[str], None] | None = None,
    templates: Templates | None = None,
) -> Conversation:
    """The conversation ``chosen`` asks for, from settled ``settings`` (flags > a template's
    choices > environment > config > defaults, applied here in that order) and the ``stores``
    it is kept in; ``templates``: where ``-t`` finds them."""
    if chosen.session is not None and chosen.continue_last:
        raise UsageError("use either -c/--continue or -S/--session, not both")
    if chosen.base_url:
        check_url(chosen.base_url, what="--base-url", error=UsageError)
    if chosen.proxy:
        check_url(chosen.proxy, what="--proxy", schemes=PROXY_SCHEMES, error=UsageError)
    registry = Registry.from_settings(settings, stores)
    sessions = stores.sessions

    session: Session | None = None
    new_name: str | None = None
    branch_after: int | None = None
    if chosen.continue_last:
        session = sessions.latest()
        if session is None:
            log.warning("no session to continue yet; starting a new one")
    elif chosen.session is not None:
        session = sessions.find_or_none(chosen.session)
        ref, _, number = chosen.session.rpartition("@")
        if session is None and ref and number.isdigit():  # NAME@N: a branch after message N
            session = sessions.find_or_none(ref)
            if session is None:
                raise UsageError(f"no session {ref!r} to continue from message {number} of")
            branch_after = int(number)
        if session is None:
            new_name = check_session_name(chosen.session)  # before anything is sent

    applied = _template(chosen, session, templates)
    template = applied.template if applied is not None else None
    # -t (or --var) now: its provider and model too; the session's own: the session's pair
    # (what last answered there) stays, the template's temperature and options come back.
    fresh = chosen.template is not None or bool(chosen.variables)

    # -p a,b,c: a first, then b and c when it fails before any text.
    chain = [n.strip() for n in (chosen.provider or "").split(",") if n.strip()]
    provider_name = chain[0] if chain else None
    if provider_name is None and fresh and template is not None and template.provider is not None:
        if template.provider not in registry:
            raise ConfigError(
                f"template {template.name!r} ({template.origin}) names the provider "
                f"{template.provider!r}, which is not known here; see `chatcli providers`"
            )
        provider_name = template.provider
    if provider_name is None and session is not None and session.provider in registry:
        provider_name = session.provider
    provider_name = resolve_provider_name(settings, provider_name)
    provider_cls = registry.get(provider_name)
    fallback = [registry.get(n).name for n in (chain[1:] if len(chain) > 1 else settings.fallback)]
    fallback = [n for n in dict.fromkeys(fallback) if n != provider_cls.name]
    # A template's model and options are for its provider (any, when it names none).
    template_fits = template is not None and (
        template.provider is None or registry.get(template.provider).name == provider_cls.name
    )
    # Options the chosen provider does not take are refused now, before anything is sent.
    options = provider_cls.check_options(
        {**(template.options if template is not None and template_fits else {}), **chosen.options}
    )

    model = chosen.model
    if model is None and fresh and template is not None and template_fits:
        model = template.model
    if model is None and session is not None and session.provider == provider_cls.name:
        model = session.model
    if model is None:
        model = settings.model_for(provider_cls.name)

    defaults = TurnRequest(
        provider=provider_cls.name,
        model=model,
        temperature=next(
            (
                t
                for t in (
                    chosen.temperature,
                    template.temperature if template is not None else None,
                    settings.temperature,
                )
                if t is not None
            ),
            None,
        ),
        options=options,
        stream=chosen.stream,
        proxy=chosen.proxy,
        base_url=chosen.base_url,
        timeout=chosen.timeout if chosen.timeout is not None else settings.timeout,
        retries=next(r for r in (chosen.retries, settings.retries, 2) if r is not None),
        fallback=tuple(fallback),
    )
    conversation = Conversation(
        registry,
        defaults,
        store=sessions,
        save=chosen.save,
        session=session,  # a continued session brings its own system prompt...
        system=chosen.system if chosen.system is not None else settings.system,
        name=new_name,
        notice=notice,
        templates=templates,
    )
    if applied is not None and fresh:
        conversation.set_template(applied)  # -t (or --var) replaces a session's template...
    if applied is not None:
        # What /role restores when it changes or drops the template: the choices without it.
        base_temperature = chosen.temperature
        if base_temperature is None:
            base_temperature = settings.temperature
        conversation.role_baseline = (
            base_temperature,
            dict(provider_cls.check_options(chosen.options)),
        )
    if chosen.system is not None:
        conversation.set_system(chosen.system)  # ...and --system any system prompt
    if branch_after is not None:
        if not chosen.save:
            raise UsageError("-S NAME@N starts a branch in the session; not with --no-save")
        conversation.branch_at(branch_after)
    return conversation


def _template(
    chosen: ChatOptions, session: Session | None, templates: Templates | None
) -> Applied | None:
    """The template ``-t`` names with its ``--var`` values, else the continued session's
    (``--var`` changing its values); ``None`` without either. Unknown names and variables,
    and missing values, are usage errors. (A session's template that is gone or broken is
    ``None`` here; the conversation says so when it loads the session.)"""
    if chosen.template is not None:
        if templates is None:
            raise UsageError("templates are not available here")
        template = templates.get(chosen.template)
        return Applied(template, template.values(chosen.variables))
    kept = None
    if session is not None and session.template and templates is not None:
        with contextlib.suppress(ChatcliError):
            kept = templates.load(session.template)
    if kept is None:
        if chosen.variables:
            raise UsageError("--var goes with -t/--template (or a session that uses a template)")
        return None
    if chosen.variables:
        return Applied(kept.template, kept.template.values({**kept.values, **chosen.variables}))
    return kept


def default_provider_name(settings: Settings) -> str | None:
    """The configured default (config or ``CHATCLI_PROVIDER``), else ``local`` when installed
    (the runtime, and a model: the bundled one or ``[providers.local] model``)."""
    if settings.provider:
        return settings.provider
    from chatcli.providers.local import bundled_model, runtime_installed

    if not runtime_installed():
        return None
    configured = settings.providers.get("local", {}).get("model")
    return "local" if configured or bundled_model() is not None else None


def resolve_provider_name(settings: Settings, flag: str | None) -> str:
    name = flag or default_provider_name(settings)
    if not name:
        raise ConfigError(
            "no provider chosen: pass -p NAME (see `chatcli providers`), set CHATCLI_PROVIDER or "
            "`provider` in config.toml (see `chatcli paths`), or install the offline model: "
            + install_hint("local")
        )
    return name
