import CCrypto

/// A message digest through OpenSSL's libcrypto (EVP), for plugins: the algorithms Glance
/// names in `os_hash_algo` (sha512 today), md5 (`checksum`, `Content-MD5`), sha256, sha1.
/// (libcrypto is already in the agent's process through librabbitmq.)
public final class Digest {
    public let algorithm: String
    private let ctx: OpaquePointer

    /// nil when libcrypto does not know `algorithm`.
    public init?(_ algorithm: String) {
        guard let md = EVP_get_digestbyname(algorithm), let ctx = EVP_MD_CTX_new() else { return nil }
        guard EVP_DigestInit_ex(ctx, md, nil) == 1 else {
            EVP_MD_CTX_free(ctx)
            return nil
        }
        self.algorithm = algorithm
        self.ctx = ctx
    }

    deinit { EVP_MD_CTX_free(ctx) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        if bytes.count > 0 { EVP_DigestUpdate(ctx, bytes.baseAddress, bytes.count) }
    }

    /// The digest as lower-case hex.
    public func hex() -> String {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var len: UInt32 = 0
        EVP_DigestFinal_ex(ctx, &out, &len)
        let digits = Array("0123456789abcdef".utf8)
        var s = [UInt8]()
        s.reserveCapacity(Int(len) * 2)
        for b in out[0..<Int(len)] {
            s.append(digits[Int(b >> 4)])
            s.append(digits[Int(b & 0xF)])
        }
        return String(decoding: s, as: UTF8.self)
    }

    public static func hex(_ algorithm: String, of text: String) -> String {
        let d = Digest(algorithm)!
        var t = text
        t.withUTF8 { d.update(UnsafeRawBufferPointer($0)) }
        return d.hex()
    }
}
