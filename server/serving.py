"""uvicorn's Server with SPEC's shutdown (§5): on SIGTERM (or Ctrl-C) new requests get 503 while the
in-flight ones finish, for up to `--shutdown-timeout` seconds; then what is left is cancelled and the
process exits with status 0. A second signal exits at once."""

import asyncio
import logging
import time

import uvicorn

from server.runtime import Runtime

log = logging.getLogger("gptserve.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime, grace: float):
        super().__init__(config)
        self.runtime = runtime
        self.grace = grace
        self.signals = 0
        self.announced = False
        self.stopper: asyncio.Task | None = None

    def handle_exit(self, sig, frame) -> None:  # noqa: ANN001
        # Runs in a signal handler: only set flags. Unlike uvicorn's own handler this does not record the
        # signal for re-raising after shutdown, so a drained SIGTERM ends with exit status 0.
        self.signals += 1
        if self.signals > 1:
            self.force_exit = True
            self.should_exit = True
            return
        self.runtime.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        rt = self.runtime
        if rt.draining and not self.should_exit:
            waited = time.monotonic() - (rt.drain_started or time.monotonic())
            if not self.announced:
                self.announced = True
                log.info("shutting down: refusing new requests, waiting up to %g s for %d in flight",
                         self.grace, rt.in_flight)
            if rt.in_flight <= 0:
                self.should_exit = True
            elif waited >= self.grace and self.stopper is None and rt.engine is not None:
                log.warning("grace period over: cancelling %d in-flight request(s)", rt.in_flight)
                self.stopper = asyncio.create_task(asyncio.to_thread(rt.engine.stop, 5.0))
            elif waited >= self.grace + 5:
                self.should_exit = True
        return await super().on_tick(counter)
