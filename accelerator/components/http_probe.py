"""One HTTP GET for WAIT --url, kept apart so agents import urllib only when they need it."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from typing import Any

# One unanswered request must not eat the whole retry budget, nor fail a slow but live server.
URL_ATTEMPT_TIMEOUT = 10.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx already means "the server is up"; following it could only add a failure."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def get_url(url: str) -> tuple[bool, str]:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=URL_ATTEMPT_TIMEOUT) as response:
            return True, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return 300 <= exc.code < 400, f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        return False, f"cannot reach {url}: {exc.reason}"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return False, f"cannot fetch {url}: {exc}"
