"""One process that looks like N agents to an Accelerator server, for the fan-out benchmark.

Why: a thousand real agents (a Python process each) do not fit on a 2-core benchmark machine,
yet the server's fan-out cost (sending one job to 1,000 peers, collecting 1,000 results) is
what we want to measure.  Each simulated agent is a real DEALER socket with its own Curve key
pair enrolled under its own name, so the server does exactly the work it would do for real
agents: Curve handshakes, ZAP checks, HELLO, heartbeats, JOB out, RESULT in.  The simulated
agents run nothing: a JOB is answered at once with a successful RESULT.

All sockets are served by one loop on a zmq Poller.  Heartbeats go out at the interval the
server sets in WELCOME, spread evenly over the interval rather than all at once.
Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket as pysocket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from accelerator import __version__, protocol
from accelerator.model import JobResult, JobState
from accelerator.protocol import Kind, Message, ProtocolError

TICK_MS = 20


@dataclass(slots=True)
class SimulatedAgent:
    name: str
    socket: zmq.Socket
    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    next_beat: float = 0.0
    jobs: int = 0

    def hello(self) -> None:
        self.socket.send(Message(Kind.HELLO, {
            "name": self.name, "session": self.session, "hostname": pysocket.gethostname(),
            "pid": os.getpid(), "version": __version__,
        }).pack(), zmq.NOBLOCK)


class Simulator:
    def __init__(self, endpoint: str, server_public: str, keypairs: dict[str, tuple[str, str]]) -> None:
        self.context = zmq.Context()
        self.context.max_sockets = len(keypairs) + 64  # the default (1023) is too few
        self.poller = zmq.Poller()
        self.agents: dict[zmq.Socket, SimulatedAgent] = {}
        self.heartbeat = 1.0
        self.running = True
        for name, (public, secret) in keypairs.items():
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.curve_serverkey = server_public.encode()
            sock.curve_publickey = public.encode()
            sock.curve_secretkey = secret.encode()
            sock.connect(endpoint)
            self.poller.register(sock, zmq.POLLIN)
            self.agents[sock] = SimulatedAgent(name, sock)

    def run(self) -> None:
        now = time.monotonic()
        for index, agent in enumerate(self.agents.values()):
            agent.hello()
            agent.next_beat = now + self.heartbeat * (1 + index / len(self.agents))
        while self.running:
            for sock, _ in self.poller.poll(TICK_MS):
                self.drain(self.agents[sock])
            self.beat(time.monotonic())
        answered = sum(agent.jobs for agent in self.agents.values())
        print(f"simulator: {len(self.agents)} agents answered {answered} jobs", file=sys.stderr)
        self.context.destroy(linger=0)

    def drain(self, agent: SimulatedAgent) -> None:
        while True:
            try:
                frame = agent.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.handle(agent, protocol.unpack(frame))
            except ProtocolError as exc:
                print(f"{agent.name}: dropped a frame: {exc}", file=sys.stderr)

    def handle(self, agent: SimulatedAgent, msg: Message) -> None:
        if msg.kind is Kind.JOB:
            agent.jobs += 1
            result = JobResult(state=JobState.SUCCESS, rc=0).to_wire()
            agent.socket.send(Message(Kind.RESULT, {"result": result}, job=msg.job).pack(), zmq.NOBLOCK)
        elif msg.kind is Kind.WELCOME:
            interval = msg.data.get("heartbeat")
            if isinstance(interval, (int, float)) and interval > 0:
                self.heartbeat = float(interval)
        elif msg.kind is Kind.ERROR and msg.data.get("reason") == "hello-required":
            agent.hello()
        # Kind.HEARTBEAT is the server's answer to ours: nothing to do.

    def beat(self, now: float) -> None:
        for agent in self.agents.values():
            if now >= agent.next_beat:
                agent.socket.send(Message(Kind.HEARTBEAT).pack(), zmq.NOBLOCK)
                agent.next_beat = now + self.heartbeat

    def stop(self) -> None:
        self.running = False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True, help="the server's agent endpoint")
    parser.add_argument("--server-key", required=True, help="the server's public key (Z85)")
    parser.add_argument("--keys", type=Path, required=True, help="JSON file: name -> [public, secret]")
    args = parser.parse_args()
    keypairs = {name: (pair[0], pair[1]) for name, pair in json.loads(args.keys.read_text()).items()}
    simulator = Simulator(args.server, args.server_key, keypairs)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: simulator.stop())
    simulator.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
