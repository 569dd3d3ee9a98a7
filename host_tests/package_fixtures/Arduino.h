// A stand-in for the Arduino core's Arduino.h, enough to compile a sketch that prints over
// Serial: the overloads of Print that sketches use. Test-only; not shipped in packages.
#ifndef TINYRNN_TEST_ARDUINO_H
#define TINYRNN_TEST_ARDUINO_H

#include <stddef.h>
#include <stdint.h>

#define DEC 10
#define HEX 16

class Print {
 public:
  size_t print(const char *) { return 0; }
  size_t print(char) { return 1; }
  size_t print(unsigned char, int = DEC) { return 0; }
  size_t print(int, int = DEC) { return 0; }
  size_t print(unsigned int, int = DEC) { return 0; }
  size_t print(long, int = DEC) { return 0; }
  size_t print(unsigned long, int = DEC) { return 0; }
  size_t print(double, int = 2) { return 0; }
  size_t println(const char *) { return 0; }
  size_t println(char) { return 1; }
  size_t println(int, int = DEC) { return 0; }
  size_t println(unsigned int, int = DEC) { return 0; }
  size_t println(long, int = DEC) { return 0; }
  size_t println(unsigned long, int = DEC) { return 0; }
  size_t println(double, int = 2) { return 0; }
  size_t println() { return 0; }
};

class HardwareSerial : public Print {
 public:
  void begin(unsigned long) {}
  explicit operator bool() { return true; }
};

extern HardwareSerial Serial;

void setup();
void loop();

#endif
