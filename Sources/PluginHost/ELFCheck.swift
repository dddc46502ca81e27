#if canImport(Glibc)
import Glibc
#endif

/// Checks that a file is a complete ELF shared object for this machine before `dlopen`
/// maps it. A truncated file passes `dlopen`'s own header check and then faults (SIGBUS)
/// when the loader touches a page past its end; here it is refused with a reason instead.
///
/// Checked: the ELF magic, 64-bit little-endian, `ET_DYN`, this machine's architecture,
/// a program-header and a section-header table that lie inside the file, and every
/// loadable segment's file bytes inside the file.
public enum ELFCheck {
    /// Why `path` is not a loadable shared object, or nil when it is one.
    public static func validate(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "cannot open: \(String(cString: strerror(errno)))" }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return "cannot stat: \(String(cString: strerror(errno)))" }
        let size = Int(st.st_size)
        var header = [UInt8](repeating: 0, count: 64)
        let n = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 64, 0) }
        guard n >= 4, header[0..<4] == [0x7F, 0x45, 0x4C, 0x46] else { return "is not a shared object (no ELF header)" }
        return check(header: header, size: size) { offset, count in
            var buf = [UInt8](repeating: 0, count: count)
            let got = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
            return got == count ? buf : nil
        }
    }

    /// The checks on a header already read; `read(offset, count)` reads more of the file.
    /// Separate from the file so the fuzz target can drive it with arbitrary bytes.
    public static func check(header: [UInt8], size: Int, read: (Int, Int) -> [UInt8]?) -> String? {
        guard header.count >= 64, size >= 64 else { return "is truncated: \(size) bytes is not even an ELF header" }
        guard header[4] == 2 else { return "is not a 64-bit ELF object" }
        guard header[5] == 1 else { return "is not a little-endian ELF object" }
        guard u16(header, 16) == 3 else { return "is not a shared object (ELF type \(u16(header, 16)), not ET_DYN)" }
        #if arch(x86_64)
        let machine = 62
        #elseif arch(arm64)
        let machine = 183
        #else
        let machine = Int(u16(header, 18))
        #endif
        guard Int(u16(header, 18)) == machine else { return "is built for another architecture (ELF machine \(u16(header, 18)))" }
        let phoff = u64(header, 32), shoff = u64(header, 40)
        let phentsize = Int(u16(header, 54)), phnum = Int(u16(header, 56))
        let shentsize = Int(u16(header, 58)), shnum = Int(u16(header, 60))
        guard phnum > 0, phentsize >= 56, phentsize <= 256 else { return "has no usable program headers" }
        guard fits(phoff, phentsize * phnum, size) else {
            return "is truncated or damaged: its program headers lie past the end of the \(size)-byte file"
        }
        if shnum > 0 {
            guard shentsize >= 64, shentsize <= 256, fits(shoff, shentsize * shnum, size) else {
                return "is truncated or damaged: its section headers lie past the end of the \(size)-byte file"
            }
        }
        guard let table = read(Int(phoff), phentsize * phnum) else { return "cannot read its program headers" }
        for i in 0..<phnum {
            let e = i * phentsize
            let type = u32(table, e)
            let offset = u64(table, e + 8), fileSize = u64(table, e + 32)
            if type == 1, !fits(offset, Int(clamping: fileSize), size) {  // PT_LOAD
                return "is truncated or damaged: loadable segment \(i) ends past the end of the \(size)-byte file"
            }
        }
        return nil
    }

    private static func fits(_ offset: UInt64, _ count: Int, _ size: Int) -> Bool {
        offset <= UInt64(size) && count >= 0 && UInt64(count) <= UInt64(size) - offset
    }

    private static func u16(_ b: [UInt8], _ at: Int) -> UInt16 {
        guard at + 2 <= b.count else { return 0 }
        return UInt16(b[at]) | UInt16(b[at + 1]) << 8
    }

    private static func u32(_ b: [UInt8], _ at: Int) -> UInt32 {
        guard at + 4 <= b.count else { return 0 }
        return (0..<4).reduce(0) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) }
    }

    private static func u64(_ b: [UInt8], _ at: Int) -> UInt64 {
        guard at + 8 <= b.count else { return 0 }
        return (0..<8).reduce(0) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) }
    }
}
