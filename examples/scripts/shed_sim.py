#!/usr/bin/env python3
"""Where should overload be refused? The discrete-event model of /work/shared/tools/queue_sim.py (Poisson
arrivals, backends with `slots` servers and a FIFO queue, exponential service times, no network or CPU cost),
extended with admission control, 8 independent clients and one retry on another endpoint.

Rules compared (each with the client's dispatch `jsq_w2`: two candidates drawn by capacity weight, the one
with the shorter expected delay by the client's *own* in-flight count, as one of 8 clients sees it):
  none          today: every request queues at its backend
  agent(q)      the backend's layer refuses when in flight >= slots + ceil(q * slots) (it sees every client);
                the client retries a refusal once on another endpoint
  standing(q)   the backend's layer refuses when in flight >= slots + ceil(2q * slots) (a hard bound), or
                >= slots + ceil(q * slots) and it has stayed at or above that for the last STANDING_S seconds
                (a standing queue, as CoDel tells a standing queue from a burst); a retry as for agent(q)
  client(q)     each client refuses locally when its own in flight at the chosen endpoint
                >= (slots + ceil(q * slots)) / 8 (a client cannot see the other 7), then tries the other candidate
It prints, per load and rule: goodput / capacity, refused %, p50 and p99 (ms) of served requests,
refusals at normal load (0.6) being the price paid when nothing is overloaded.
usage: python3 shed_sim.py
"""
import heapq, math, random

CLIENTS = 8
STANDING_S = 0.1


def run(rule, q, backends, load, T=120.0, seed=7):
    rng = random.Random(seed)
    caps = [k / m for k, m in backends]
    tot = sum(caps)
    w = [c / tot for c in caps]
    rate = load * tot
    st = [{"k": k, "mean": m, "busy": 0, "q": [], "inf": 0, "by": [0] * CLIENTS} for k, m in backends]
    limit = [k + math.ceil(q * k) for k, _ in backends]
    hard = [k + math.ceil(2 * q * k) for k, _ in backends]
    # since when each backend's in-flight count has been at or above its limit (None: it is below)
    above = [None] * len(backends)
    ev = [(rng.expovariate(rate), 0, -1, 0.0, 0)]
    lat, served, refused, offered = [], 0, 0, 0

    def start(i, now, arr, c):
        st[i]["busy"] += 1
        heapq.heappush(ev, (now + rng.expovariate(1 / st[i]["mean"]), 1, i, arr, c))

    def delay(j, c):
        # the client's own view, scaled to the whole fleet (it sees ~1/8 of each queue)
        return (st[j]["by"][c] * CLIENTS + 1) / st[j]["k"] * st[j]["mean"]

    def track(i, now):
        if st[i]["inf"] < limit[i]:
            above[i] = None
        elif above[i] is None:
            above[i] = now

    def admit(i, c):
        if rule == "agent":
            return st[i]["inf"] < limit[i]
        if rule == "standing":
            if st[i]["inf"] >= hard[i]:
                return False
            return not (above[i] is not None and now - above[i] >= STANDING_S)
        if rule == "client":
            return st[i]["by"][c] < limit[i] / CLIENTS
        return True

    while ev:
        now, kind, i, arr, c = heapq.heappop(ev)
        if kind == 0:
            if now > T:
                continue
            heapq.heappush(ev, (now + rng.expovariate(rate), 0, -1, 0.0, 0))
            c = rng.randrange(CLIENTS)
            cand = rng.choices(range(len(st)), w, k=2)
            cand.sort(key=lambda j: delay(j, c))
            measured = now > 5.0
            offered += measured
            placed = None
            first = cand[0]
            if admit(first, c):
                placed = first
            else:
                # one retry on another endpoint (the other candidate if distinct, else a weighted draw)
                others = [j for j in range(len(st)) if j != first]
                second = cand[1] if cand[1] != first else rng.choices(others, [w[j] for j in others])[0]
                if admit(second, c):
                    placed = second
            if placed is None:
                refused += measured
                continue
            b = st[placed]
            b["inf"] += 1
            b["by"][c] += 1
            track(placed, now)
            if b["busy"] < b["k"]:
                start(placed, now, now, c)
            else:
                b["q"].append((now, c))
        else:
            b = st[i]
            b["busy"] -= 1
            b["inf"] -= 1
            b["by"][c] -= 1
            track(i, now)
            if arr > 5.0:
                lat.append(now - arr)
                served += 1
            if b["q"]:
                a, cc = b["q"].pop(0)
                start(i, now, a, cc)
    lat.sort()
    span = T - 5.0
    p = lambda x: lat[min(len(lat) - 1, int(x * len(lat)))] * 1000 if lat else float("nan")
    return served / span / tot, refused / max(offered, 1), p(0.5), p(0.99)


if __name__ == "__main__":
    # the fault matrix's overload cluster (two fast and two slow backends, 6:1 each; capacity 1400 req/s)
    # and the same with one fast backend lost (the fault matrix's faults leave the others near 85% busy)
    full = [(6, 0.010), (6, 0.010), (4, 0.040), (4, 0.040)]
    one_lost = [(6, 0.010), (4, 0.040), (4, 0.040)]
    rules = [("none", 0), ("agent", 1.0), ("agent", 2.0), ("standing", 1.0), ("standing", 2.0), ("client", 1.0)]
    for backends, load in [(full, 0.6), (full, 0.9), (one_lost, 0.85), (full, 1.3)]:
        print(f"load {load}{' (one fast backend lost)' if backends is one_lost else ''}:")
        for rule, q in rules:
            T = 40.0 if rule == "none" and load > 1 else 120.0
            g, r, p50, p99 = run(rule, q, backends, load, T=T)
            name = rule if rule == "none" else f"{rule}({q})"
            print(f"  {name:12} goodput {g:6.1%} of capacity  refused {r:6.2%}  p50 {p50:8.1f} ms  p99 {p99:8.1f} ms")
