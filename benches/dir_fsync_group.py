"""Does sharing one directory fsync among puts in flight help? (README, "Measured", floor.)

python3 benches/dir_fsync_group.py DIR [THREADS]: THREADS threads each write 150 staged
files (write, fsync, rename) into one fresh directory under DIR, then fsync the
directory each ("plain") or share one directory fsync among those that renamed
before it began ("group"), in alternating order over 3 rounds; prints writes/s and
the median ratio. Nothing is removed: DIR is left for you to delete."""
import os, threading, time, sys
N=int(sys.argv[2]) if len(sys.argv)>2 else 16
PER=150
base=sys.argv[1]
class G:
    def __init__(s):
        s.lock=threading.Lock(); s.cv=threading.Condition(s.lock); s.running=False; s.next=[None]
def gsync(g, d):
    with g.cv:
        mine=g.next
        while True:
            if mine[0] is not None: return
            if not g.running:
                g.running=True; rnd=g.next; g.next=[None]; break
            g.cv.wait()
    fd=os.open(d, os.O_RDONLY); os.fsync(fd); os.close(fd)
    with g.cv:
        rnd[0]=True; g.running=False; g.cv.notify_all()
def work(d, i, group, g):
    v=b"x"*1400
    for j in range(PER):
        p=f"{d}/k{i}_{j}"; st=p+"#1"
        fd=os.open(st, os.O_CREAT|os.O_EXCL|os.O_WRONLY); os.write(fd, v); os.fsync(fd); os.close(fd)
        os.rename(st, p)
        if group: gsync(g, d)
        else:
            fd=os.open(d, os.O_RDONLY); os.fsync(fd); os.close(fd)
res={0:[],1:[]}
for rnd in range(3):
    for group in ([0,1] if rnd%2==0 else [1,0]):
        d=f"{base}/r{rnd}g{group}_{time.time_ns()}"; os.makedirs(d)
        g=G(); ts=[threading.Thread(target=work,args=(d,i,group,g)) for i in range(N)]
        t0=time.time(); [t.start() for t in ts]; [t.join() for t in ts]; dt=time.time()-t0
        res[group].append(N*PER/dt); print(rnd, "group" if group else "plain", round(N*PER/dt))
import statistics
print("median plain", round(statistics.median(res[0])), "group", round(statistics.median(res[1])), "ratio", round(statistics.median(res[1])/statistics.median(res[0]),2))
