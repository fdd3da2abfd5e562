#!/usr/bin/env python3
"""The import graph of the crate's top-level modules (uses of `crate::<module>` outside comments
and test modules), and any cycle in it. Exit status 1 when there is a cycle.
Run from the repository root: scripts/module-graph.py"""
import re,os,sys,collections
root=os.path.join(os.path.dirname(os.path.abspath(__file__)),'..','pipeline')
mods=collections.defaultdict(set)
def top(path):
    rel=os.path.relpath(path,root)
    parts=rel[:-3].split('/')
    return parts[0]
for d,_,fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs'): continue
        p=os.path.join(d,f); m=top(p)
        src=open(p).read()
        src=re.sub(r'//[^\n]*','',src)
        # strip test modules roughly
        i=src.find('#[cfg(test)]')
        if i>=0: src=src[:i]
        for t in re.findall(r'crate::([a-z_]+)',src):
            if t!=m: mods[m].add(t)
        for t in re.findall(r'^use crate::\{([^}]*)\}',src,re.M):
            for x in re.findall(r'\b([a-z_]+)::',t)+re.findall(r'\b([a-z_]+)\b',t):
                pass
for m in sorted(mods): print(m,'->',' '.join(sorted(mods[m])))
# cycles
import itertools
def reach(a):
    seen=set(); st=[a]
    while st:
        x=st.pop()
        for y in mods.get(x,()):
            if y not in seen: seen.add(y); st.append(y)
    return seen
cyc=[(a,b) for a in mods for b in mods[a] if a in reach(b) and a<b]
print('cycles (pairs in a strongly connected component):',cyc or 'none')
sys.exit(1 if cyc else 0)
