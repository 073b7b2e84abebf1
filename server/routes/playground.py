"""`GET /`: the playground, one self-contained HTML page (no CDN, no build step) that streams from /generate."""

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["Playground"])

PAGE = Path(__file__).resolve().parent.parent / "static" / "playground.html"


@lru_cache(maxsize=1)
def page() -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/", summary="The playground: type a prompt, watch the tokens stream", response_class=HTMLResponse)
@router.head("/", include_in_schema=False)
async def playground() -> HTMLResponse:
    # The page is static; the API key (when one is configured) is typed into it and sent by its script,
    # so this route itself is open: the API-key check in server/middleware.py lets GET and HEAD / through.
    return HTMLResponse(page(), headers={"Cache-Control": "no-cache"})
