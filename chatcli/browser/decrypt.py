"""The Chrome family's encrypted cookie values, opened with each platform's key.

* Linux: ``v10`` values use AES-128-CBC under PBKDF2-SHA1(b"peanuts", b"saltysalt", 1 iteration,
  16 bytes), IV 16 spaces. ``v11`` values use a password from the desktop keyring (the Secret
  Service through the ``secretstorage`` package, or KWallet through ``kwallet-query``), and fall
  back to the ``v10`` key and to the empty password, as the browser itself does.
* macOS: ``v10`` under the Keychain item "Chrome Safe Storage" (PBKDF2 with 1003 iterations).
* Windows: ``v10`` with AES-256-GCM under the key in ``Local State``, itself sealed with DPAPI.
  ``v20`` values (Chrome's app-bound encryption, since version 127) cannot be read by another
  program; the error says so.

From database version 24 (the ``meta`` table) the plaintext starts with the SHA-256 of the
cookie's host; it is checked (a wrong key fails it) and removed. AES needs the ``cryptography``
package (the ``browser`` extra), imported only when a value is decrypted.

The environment is passed in (``env``): whether there is a desktop session bus to ask the
keyring is read from it, never from the process.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from chatcli import install_hint
from chatcli.browser.profiles import Browser
from chatcli.errors import UsageError

# The name the importer always logged under (debug lines show it).
log = logging.getLogger("chatcli.store")

#: What to install for Chrome's encrypted values (said in the error when it is missing).
INSTALL_HINT: Final = f"{install_hint('browser')}, or: pip install cryptography"


def _pbkdf2(password: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha1", password, b"saltysalt", iterations, 16)


class ChromiumKeys:
    """Decrypts the Chrome family's cookie values, fetching each platform's key on first need.

    ``env`` is the environment chatcli runs in (the Linux keyring is asked only when it names a
    session bus); ``keyring`` stands in for the Linux keyring lookup (tests).
    """

    def __init__(
        self,
        browser: Browser,
        *,
        platform: str,
        version: int,
        env: Mapping[str, str],
        user_data: Path | None = None,
        keyring: Callable[[Browser], bytes | None] | None = None,
    ) -> None:
        self.browser = browser
        self.platform = platform
        self.version = version
        self.env = env
        self.user_data = user_data
        self._keyring = keyring or functools.partial(_linux_keyring_password, env=env)
        self._keys: dict[str, list[bytes]] = {}
        self._keyring_found: bool | None = None

    def decrypt(self, host: str, blob: bytes) -> str:
        prefix = blob[:3]
        if self.platform == "win32":
            return self._decrypt_windows(host, prefix, blob)
        if prefix == b"v11" and self.platform != "darwin":
            keys = self._linux_v11_keys()
        elif prefix == b"v10":
            keys = [_pbkdf2(self._macos_password(), 1003)] if self.platform == "darwin" else []
            keys = keys or [_pbkdf2(b"peanuts", 1)]
        else:
            raise UsageError(
                f"{self.browser.name} stores a cookie of {host} in a format chatcli does not "
                f"know ({prefix!r}); export the cookies with a browser extension instead"
            )
        for key in keys:
            plain = _unpadded(_cbc_decrypt(key, blob[3:]))
            text = self._plaintext(host, plain)
            if text is not None:
                return text
        raise UsageError(self._cannot_decrypt(host, prefix))

    def _plaintext(self, host: str, plain: bytes | None) -> str | None:
        if plain is None:
            return None
        if self.version >= 24:
            if plain[:32] != hashlib.sha256(host.encode()).digest():
                return None  # the wrong key: the host's hash did not come out
            plain = plain[32:]
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def _cannot_decrypt(self, host: str, prefix: bytes) -> str:
        name = self.browser.name
        if prefix == b"v11":
            label = f"{self.browser.keyring_linux} Safe Storage"
            if self._keyring_found:
                why = f"the password in the keyring item {label!r} did not open them"
            elif _module_missing("secretstorage") and not _kwallet(self.env):
                why = (
                    f"reading the keyring item {label!r} needs the secretstorage package: "
                    f"{install_hint('browser')}, or: pip install secretstorage"
                )
            elif not self.env.get("DBUS_SESSION_BUS_ADDRESS") and not _kwallet(self.env):
                why = (
                    f"the keyring item {label!r} holds the key, and there is no desktop session "
                    "bus to ask for it (DBUS_SESSION_BUS_ADDRESS is not set): run this in your "
                    "desktop session"
                )
            else:
                why = f"no keyring item {label!r} could be read (is the keyring unlocked?)"
            return f"cannot decrypt {name}'s cookies for {host}: {why}"
        return f"cannot decrypt {name}'s cookies for {host}: the key did not fit"

    def _linux_v11_keys(self) -> list[bytes]:
        if "v11" not in self._keys:
            password = self._keyring(self.browser)
            self._keyring_found = password is not None
            keys = [_pbkdf2(password, 1)] if password is not None else []
            self._keys["v11"] = [*keys, _pbkdf2(b"peanuts", 1), _pbkdf2(b"", 1)]
        return self._keys["v11"]

    def _macos_password(self) -> bytes:
        if "macos" not in self._keys:
            self._keys["macos"] = [_macos_keychain_password(self.browser)]
        return self._keys["macos"][0]

    def _decrypt_windows(self, host: str, prefix: bytes, blob: bytes) -> str:
        name = self.browser.name
        if prefix == b"v20":
            raise UsageError(
                f"{name} seals its cookies for {host} with app-bound encryption (v20), which "
                "other programs cannot open; export them with a browser extension and run "
                "`chatcli cookies import FILE`"
            )
        if prefix in (b"v10", b"v11"):
            key = self.windows_key()
            text = self._plaintext(host, _gcm_decrypt(key, blob[3:15], blob[15:]))
            if text is None:
                raise UsageError(self._cannot_decrypt(host, prefix))
            return text
        text = self._plaintext(host, _dpapi_decrypt(blob))  # before Chrome 80
        if text is None:
            raise UsageError(self._cannot_decrypt(host, prefix))
        return text

    def windows_key(self) -> bytes:
        if "win32" not in self._keys:
            if self.user_data is None:
                raise UsageError(
                    f"cannot decrypt {self.browser.name}'s cookies: no 'Local State' file found "
                    "next to the profile (pass --profile with the profile inside its User Data)"
                )
            state_file = self.user_data / "Local State"
            try:
                state = json.loads(state_file.read_text(encoding="utf-8"))
                sealed = base64.b64decode(state["os_crypt"]["encrypted_key"])
            except (OSError, ValueError, KeyError, TypeError):
                raise UsageError(f"cannot read the cookie key in {state_file}") from None
            if not sealed.startswith(b"DPAPI"):
                raise UsageError(f"the cookie key in {state_file} is not sealed with DPAPI")
            self._keys["win32"] = [_dpapi_decrypt(sealed[5:])]
        return self._keys["win32"][0]


def _module_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def _cipher_module() -> Any:
    import importlib

    try:
        return importlib.import_module("cryptography.hazmat.primitives.ciphers")
    except ImportError:
        raise UsageError(
            f"Chrome-family cookies are encrypted and decrypting them needs the cryptography "
            f"package: {INSTALL_HINT}"
        ) from None


def _cbc_decrypt(key: bytes, data: bytes) -> bytes | None:
    if not data or len(data) % 16:
        return None
    ciphers = _cipher_module()
    decryptor = ciphers.Cipher(
        ciphers.algorithms.AES(key), ciphers.modes.CBC(b" " * 16)
    ).decryptor()
    return bytes(decryptor.update(data) + decryptor.finalize())


def _unpadded(plain: bytes | None) -> bytes | None:
    """``plain`` without its PKCS#7 padding; ``None`` when the padding is wrong (a wrong key)."""
    if not plain:
        return None
    pad = plain[-1]
    if not 1 <= pad <= 16 or plain[-pad:] != bytes([pad]) * pad:
        return None
    return plain[:-pad]


def _gcm_decrypt(key: bytes, nonce: bytes, data: bytes) -> bytes | None:
    import importlib

    _cipher_module()  # the one clear error when cryptography is missing
    aead = importlib.import_module("cryptography.hazmat.primitives.ciphers.aead")
    exceptions = importlib.import_module("cryptography.exceptions")
    try:
        return bytes(aead.AESGCM(key).decrypt(nonce, data, None))
    except (exceptions.InvalidTag, ValueError):
        return None


# -- the platforms' key stores -------------------------------------------------------------------


def _kwallet(env: Mapping[str, str]) -> str | None:
    """KWallet's command-line reader, looked up on the PATH of ``env`` (not the process's)."""
    return shutil.which("kwallet-query", path=env.get("PATH", os.defpath))


def _linux_keyring_password(browser: Browser, *, env: Mapping[str, str]) -> bytes | None:
    """The "NAME Safe Storage" password from the Secret Service or KWallet, if either has it.

    The Secret Service is asked only when ``env`` names a session bus, and on that bus (not on
    whatever the process's own environment says).
    """
    label = f"{browser.keyring_linux} Safe Storage"
    bus = env.get("DBUS_SESSION_BUS_ADDRESS")
    if bus and not _module_missing("secretstorage"):
        import importlib

        secretstorage: Any = importlib.import_module("secretstorage")
        try:
            # secretstorage.dbus_init() without the process environment: the same two steps.
            blocking: Any = importlib.import_module("jeepney.io.blocking")
            connection = blocking.open_dbus_connection(bus=bus)
            try:
                secretstorage.util.add_match_rules(connection)
                collection = secretstorage.get_default_collection(connection)
                for item in collection.get_all_items():
                    if item.get_label() == label and not item.is_locked():
                        return bytes(item.get_secret())
            finally:
                connection.close()
        except Exception as exc:  # a missing or locked keyring: try the next source
            log.debug("the Secret Service had no %r: %s", label, type(exc).__name__)
    kwallet = _kwallet(env)
    if kwallet:
        folder = f"{browser.keyring_linux} Keys"
        for wallet in ("kdewallet",):
            try:
                done = subprocess.run(
                    [kwallet, "--read-password", label, "--folder", folder, wallet],
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired):
                continue
            out = done.stdout.strip()
            if done.returncode == 0 and out and not out.lower().startswith(b"failed to read"):
                return out
    return None


def _macos_keychain_password(browser: Browser) -> bytes:
    service = f"{browser.keyring_macos} Safe Storage"
    try:
        done = subprocess.run(
            ["security", "find-generic-password", "-w", "-s", service],
            capture_output=True,
            timeout=60,  # the Keychain may ask the user to allow it
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot ask the Keychain for {service!r}: {exc}") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise UsageError(
            f"the Keychain did not give the password {service!r} (denied, or no such item)"
        )
    return done.stdout.strip()


def _dpapi_decrypt(data: bytes) -> bytes:
    """Open ``data`` sealed with Windows DPAPI for the current user."""
    import ctypes

    class Blob(ctypes.Structure):
        _fields_ = [("size", ctypes.c_ulong), ("data", ctypes.POINTER(ctypes.c_char))]

    windll: Any = getattr(ctypes, "windll", None)
    if windll is None:
        raise UsageError("this cookie key is sealed with Windows DPAPI: read it on Windows")
    buffer = ctypes.create_string_buffer(data, len(data))
    sealed = Blob(len(data), ctypes.cast(buffer, ctypes.POINTER(ctypes.c_char)))
    opened = Blob()
    if not windll.crypt32.CryptUnprotectData(
        ctypes.byref(sealed), None, None, None, None, 0, ctypes.byref(opened)
    ):
        raise UsageError("Windows refused to open the browser's cookie key (DPAPI)")
    try:
        return ctypes.string_at(opened.data, opened.size)
    finally:
        windll.kernel32.LocalFree(opened.data)
