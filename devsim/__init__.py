"""Terminal simulators for development and tests (`td-devsim VENDOR ...`).

    cli.py       `td-devsim hikvision|zkteco|biostar`
    hikvision/   a Hikvision ISAPI terminal (Digest, events, doors, alert stream, reboots)
    zkteco.py    a ZKTeco attendance terminal pushing to a server (PUSH / iclock)
    biostar.py   a Suprema BioStar 2 server's REST API

Each simulator is written from the vendor's protocol facts and imports nothing from
`gateway/`: sharing the adapter's parser would hide that parser's mistakes. The gateway
package ships none of this.
"""
