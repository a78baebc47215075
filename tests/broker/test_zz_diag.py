import asyncio, time
from hyperhive.common import rpc, subjects
from hyperhive.broker import store, handlers, wake
from tests.broker.conftest import unique, send, recv, ack

def pct(v,p):
    v=sorted(v); return round(v[int(p/100*(len(v)-1))],3)

async def test_diag(hive):
    marks = {}
    cur = {}
    def stamp(k): cur[k]=time.perf_counter()
    orig_send = handlers.Broker.send
    async def send_h(self, req, call):
        stamp("h_send"); return await orig_send(self, req, call)
    handlers.Broker.send = send_h
    orig_ins = store.insert_messages
    async def ins(*a, **k):
        stamp("ins0"); r = await orig_ins(*a, **k); stamp("ins1"); return r
    store.insert_messages = ins
    orig_notify = wake.Waiters.notify
    def notify(self, agent):
        stamp("notify"); return orig_notify(self, agent)
    wake.Waiters.notify = notify
    orig_claim = store.claim_next
    async def claim(*a, **k):
        stamp("cl0"); r = await orig_claim(*a, **k); stamp("cl1"); return r
    store.claim_next = claim
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    rows=[]
    for i in range(500):
        w = asyncio.ensure_future(recv(nb, b, 5000))
        await asyncio.sleep(0.003)
        cur.clear()
        t0=time.perf_counter()
        r = await send(na, a, b, "hello")
        t1=time.perf_counter()
        m = await w
        t2=time.perf_counter()
        rows.append({"req->ins0": cur["ins0"]-t0, "ins": cur["ins1"]-cur["ins0"],
                     "ins1->notify": cur["notify"]-cur["ins1"], "notify->cl0": cur["cl0"]-cur["notify"], "claim": cur["cl1"]-cur["cl0"],
                     "cl1->client": t2-cur["cl1"], "send total": t1-t0, "total": t2-t0})
        await ack(nb, b, m.message.id)
    rows=rows[100:]
    for k in rows[0]:
        v=[r[k]*1000 for r in rows]; print(f"{k:14s} p50 {pct(v,50):7.3f} p90 {pct(v,90):7.3f} p99 {pct(v,99):7.3f}")
