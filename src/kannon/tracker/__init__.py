"""The Tracker Component: the public HTTP endpoints behind tracked mail.

``/o/<token>`` answers the open pixel and reports Opened, ``/c/<token>`` redirects to the URL
signed into the token and reports Clicked, ``/u/<token>`` is Kannon's own RFC 8058 one-click
unsubscribe endpoint and reports Unsubscribed. Owns the HTTP stack (the only package importing
starlette and uvicorn), the in-memory cache of token verification keys and the client-address
rules for requests that come through proxies.
"""
