/**
 * UTF-8 bytes to a string without `TextDecoder`, which some runtimes this
 * client targets lack (older React Native engines). Inputs are small (a JWT
 * payload, an occasional JSON frame delivered as bytes), so the simple
 * percent-encoding route is fast enough. Throws `URIError` on invalid UTF-8.
 */
export function utf8Decode(bytes: Uint8Array): string {
  let encoded = '';
  for (const byte of bytes) encoded += (byte < 16 ? '%0' : '%') + byte.toString(16);
  return decodeURIComponent(encoded);
}
