"""State that outlives one request: live sessions and proxies, tracked from the op stream, and
the counters behind rate(); in memory (one process) or in Redis (a fleet of replicas).

`tracking` says what each op records and when an entry stops being live (the expiry rules);
`backend` is the one small interface the engine uses, with two implementations (`memory`,
`redisstore`); `view` is what one decision's rules read through (recording or not); `frpsapi`
reads frps's own API so state can be reconciled with the source of truth. The rules layer sees
none of this: only the functions of the language (policyd.rules.statefns).
"""
