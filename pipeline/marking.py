"""The XMP packet every marked output carries: IPTC digital source type, request id, model.

Machine-readable AI marking (EU AI Act Art. 50; IPTC Photo Metadata 2025.1 "Digital Source Type" and
"AI System Used"): readers such as Pillow's `getxmp()`, exiftool and browsers' content-credential tools
find it in the standard place of each format (PNG `iTXt XML:com.adobe.xmp`, JPEG `APP1`, WebP `XMP `;
`pipeline.images.encode_image` puts it there). No timestamps and no random ids: identical inputs keep
giving identical bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from schemas.provenance import DIGITAL_SOURCE_TYPE_EDIT

IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
KLEIN_EDIT_NS = "https://klein-edit.dev/ns/xmp/1.0/"


@dataclass(frozen=True)
class OutputMarking:
    """What the XMP of one output says. `model`: the model id; `revision`: its resolved revision;
    `software`: the producing software and version, e.g. "klein-edit 0.1.0"."""

    request_id: str
    model: str
    revision: str
    software: str
    digital_source_type: str = DIGITAL_SOURCE_TYPE_EDIT


def xmp_packet(marking: OutputMarking) -> bytes:
    """The XMP packet (UTF-8, with the standard xpacket wrapper) describing `marking`.

    Properties: `Iptc4xmpExt:DigitalSourceType`, `Iptc4xmpExt:AISystemUsed` (model id),
    `Iptc4xmpExt:AISystemVersionUsed` (revision), `xmp:CreatorTool`, and `kleinedit:RequestId`,
    `kleinedit:Model`, `kleinedit:ModelRevision`.
    """
    properties = {
        "Iptc4xmpExt:DigitalSourceType": marking.digital_source_type,
        "Iptc4xmpExt:AISystemUsed": marking.model,
        "Iptc4xmpExt:AISystemVersionUsed": marking.revision,
        "xmp:CreatorTool": marking.software,
        "kleinedit:RequestId": marking.request_id,
        "kleinedit:Model": marking.model,
        "kleinedit:ModelRevision": marking.revision,
    }
    attributes = "".join(f"\n    {name}={quoteattr(value)}" for name, value in properties.items())
    packet = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        f'    xmlns:Iptc4xmpExt="{IPTC_EXT_NS}"\n'
        f'    xmlns:xmp="{XMP_NS}"\n'
        f'    xmlns:kleinedit="{KLEIN_EDIT_NS}"{attributes}/>\n'
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )
    return packet.encode("utf-8")
