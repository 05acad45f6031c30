"""Embed llmos as a local agent runtime: spawn agents, watch them, kill one, read the sessions.

Run: python examples/agent_embed.py   (uses the embedded SmolLM2; nothing leaves the machine)
"""

import llmos

with llmos.boot() as kernel:
    # 1. Spawn: a goal, the tools it may use, budgets. Returns at once; the agent runs in the kernel.
    clock = kernel.spawn("What time is it?", tools=["now"], max_steps=3)
    maths = kernel.spawn("Compute the square root of 2.", tools=["calculator"], max_steps=4, priority="high")
    idle = kernel.spawn("Write a very long story.", tools=["now"], max_steps=20)

    # 2. Watch: every step, tool call, result and answer as events (tokens too, as they stream).
    for event in clock.events():
        if event.kind != "token":
            print(f"[{clock.pid} step {event.step}] {event.kind}: {event.text[:80]}")

    # 3. Processes are visible and killable like requests.
    for row in kernel.ps():
        print(row["id"], row.get("kind", "request"), row["state"])
    kernel.cancel(idle.pid)  # or idle.kill(): cancels its LLM call in flight

    maths.wait()
    print("answer:", maths.answer, "| state:", maths.state.name.lower())
    print("killed:", idle.wait(10) and idle.state.name.lower())

    # 4. Every run is a stored session (SQLite under LLMOS_HOME), exportable as Markdown or JSON.
    print(kernel.sessions.export(maths.session_id, "md"))
