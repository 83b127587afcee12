// Package erspan encodes and decodes GRE and ERSPAN Type I, II and III
// headers (../shared/spec/erspan.md section 1).
//
// The package is pure: no syscalls, no logging and no allocation per packet.
// Decoders never read outside the slice they are given and report every
// malformed input as an Error, whose values are small integers so that a
// caller can count drops by reason in an array.
package erspan

// GRE protocol types carried by ERSPAN (spec section 1).
const (
	ProtoERSPAN   = 0x88BE // Type I (GRE S clear) or Type II (GRE S set)
	ProtoERSPAN3  = 0x22EB // Type III
	ProtoTEB      = 0x6558 // transparent Ethernet bridging (egre(4)), not ERSPAN
	GREFlagC      = 0x8000 // checksum present
	GREFlagR      = 0x4000 // routing present (obsolete)
	GREFlagK      = 0x2000 // key present
	GREFlagS      = 0x1000 // sequence number present
	GREFlagStrict = 0x0800 // strict source route (obsolete)
)

// Header sizes in bytes.
const (
	GREHeaderLen      = 4  // flags + protocol, without optional words
	TypeIIHeaderLen   = 8  // ERSPAN Type II header
	TypeIIIHeaderLen  = 12 // ERSPAN Type III header without platform subheader
	PlatformHeaderLen = 8  // Type III O-bit platform-specific subheader
	EthernetMinLen    = 14 // shortest inner frame delivered (OpenBSD drops shorter)
	// EncapTypeIILen is what Encode writes for Type II: GRE with a sequence
	// number (8) and the ERSPAN Type II header (8).
	EncapTypeIILen = 16
)

// Type is the ERSPAN type of a decoded packet.
type Type uint8

const (
	TypeI   Type = 1
	TypeII  Type = 2
	TypeIII Type = 3
)

func (t Type) String() string {
	switch t {
	case TypeI:
		return "I"
	case TypeII:
		return "II"
	case TypeIII:
		return "III"
	}
	return "unknown"
}

// Error is a reason to drop a packet. Its values index arrays of counters:
// they are dense, start at 1 and end below NumErrors. Converting an Error to
// the error interface does not allocate.
type Error uint8

const (
	ErrShort      Error = iota + 1 // shorter than the headers its flags announce
	ErrGREVersion                  // GRE version != 0
	ErrGREFlags                    // R, s, recursion control or reserved flag bits set
	ErrNotERSPAN                   // GRE protocol is neither 0x88BE nor 0x22EB
	ErrChecksum                    // GRE checksum present and wrong
	ErrFrameType                   // Type III frame type is not Ethernet (FT != 0)
	ErrInnerShort                  // inner frame shorter than 14 bytes
	ErrIPHeader                    // outer IP header malformed
	ErrFragment                    // outer IP fragment seen by a capture socket (not reassembled)
	NumErrors                      // number of Error values + 1; not an error
)

var errorNames = [NumErrors]string{
	ErrShort:      "truncated",
	ErrGREVersion: "gre-version",
	ErrGREFlags:   "gre-flags",
	ErrNotERSPAN:  "not-erspan",
	ErrChecksum:   "gre-checksum",
	ErrFrameType:  "frame-type",
	ErrInnerShort: "inner-short",
	ErrIPHeader:   "ip-header",
	ErrFragment:   "fragment",
}

// Name is a short, stable, lower-case name for counters and JSON keys.
func (e Error) Name() string {
	if e < NumErrors && errorNames[e] != "" {
		return errorNames[e]
	}
	return "unknown"
}

func (e Error) Error() string { return "erspan: " + e.Name() }

// Packet is a decoded GRE + ERSPAN packet. Frame aliases the buffer given to
// Decode; nothing is copied. Fields that a type does not carry are zero.
type Packet struct {
	Type Type

	// GRE
	GREFlags uint16 // first 16 bits of the GRE header
	Proto    uint16 // GRE protocol type
	HasKey   bool
	Key      uint32
	HasSeq   bool
	Seq      uint32

	// ERSPAN Type II and III (zero for Type I)
	Version   uint8  // Ver field: 1 for Type II, 2 for Type III
	Session   uint16 // Session ID, 0..1023
	VLAN      uint16 // original VLAN, 12 bits
	COS       uint8  // class of service, 3 bits
	Encap     uint8  // Type II En, or Type III BSO, 2 bits
	Truncated bool   // T bit: the source cut the frame

	// Type II only
	Index uint32 // 20 bits, platform-specific port/direction

	// Type III only
	Timestamp   uint32
	SGT         uint16
	PDU         bool  // P bit
	FrameType   uint8 // FT, 5 bits; 0 = Ethernet
	HWID        uint8 // 6 bits
	Direction   uint8 // D bit: 0 ingress, 1 egress
	Granularity uint8 // Gra, 2 bits
	HasPlatform bool  // O bit: 8-byte platform subheader present (skipped)
	PlatformID  uint8 // first 6 bits of the platform subheader

	// Offset is where Frame starts in the slice given to Decode.
	Offset int
	// Frame is the mirrored Ethernet frame, byte for byte as sent.
	Frame []byte
}
